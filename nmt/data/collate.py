"""Padded tensors from encoded sentences: the model's view of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nmt.data.cache import EncodedCorpus
from nmt.tokens import BOS, EOS, PAD


@dataclass
class Batch:
    src: torch.Tensor  # (batch, src_len) long, PAD-padded, ends with EOS
    src_lengths: torch.Tensor  # (batch,) long, on the CPU (pack_padded_sequence wants it there)
    tgt_in: torch.Tensor  # (batch, tgt_len) BOS y1 .. yn, PAD-padded
    tgt_out: torch.Tensor  # (batch, tgt_len) y1 .. yn EOS, PAD-padded
    indices: np.ndarray  # (batch,) positions in the corpus

    @property
    def n_tgt_tokens(self) -> int:
        return int((self.tgt_out != PAD).sum())

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.src.to(device, non_blocking=True),
            self.src_lengths,
            self.tgt_in.to(device, non_blocking=True),
            self.tgt_out.to(device, non_blocking=True),
            self.indices,
        )


def pad_sources(sequences: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Append EOS and pad: (batch, max_len + 1) ids and their lengths."""
    lengths = torch.tensor([len(s) + 1 for s in sequences], dtype=torch.long)
    out = torch.full((len(sequences), int(lengths.max()) if len(sequences) else 1), PAD, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.from_numpy(s.astype(np.int64))
        out[i, len(s)] = EOS
    return out, lengths


def collate(corpus: EncodedCorpus, indices: np.ndarray) -> Batch:
    src, src_lengths = pad_sources([corpus.src(i) for i in indices])
    targets = [corpus.tgt(i) for i in indices]
    width = max(len(t) for t in targets) + 1
    tgt_in = torch.full((len(indices), width), PAD, dtype=torch.long)
    tgt_out = torch.full((len(indices), width), PAD, dtype=torch.long)
    for i, t in enumerate(targets):
        ids = torch.from_numpy(t.astype(np.int64))
        tgt_in[i, 0] = BOS
        tgt_in[i, 1 : len(t) + 1] = ids
        tgt_out[i, : len(t)] = ids
        tgt_out[i, len(t)] = EOS
    return Batch(src, src_lengths, tgt_in, tgt_out, np.asarray(indices))
