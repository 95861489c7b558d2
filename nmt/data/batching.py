"""Token-budget batches from length buckets, and their conversion into padded tensors.

A batch's cost is `n_sentences * max(longest source, longest target)`, padding included (fairseq's count).
Sorting by (source length, target length) with a random tie-break packs sentences of equal shape together,
so padding stays small while each epoch still sees new batch compositions and a new batch order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nmt.data.cache import EncodedCorpus
from nmt.data.subword import BOS, EOS, PAD


def make_batches(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray,
    max_tokens: int,
    seed: int | None = None,
    epoch: int = 0,
    shuffle: bool = True,
) -> list[np.ndarray]:
    """Split sentence indices into batches whose padded size stays within `max_tokens`.

    Deterministic for a given (seed, epoch). `tgt_lengths` should already count the eos (or bos) token the
    model adds. A sentence longer than the budget on its own gets a batch of its own.
    """
    n = len(src_lengths)
    if n == 0:
        return []
    rng = np.random.default_rng([seed or 0, epoch]) if shuffle else None
    tie_break = rng.random(n) if rng is not None else np.arange(n)
    order = np.lexsort((tie_break, tgt_lengths, src_lengths))
    src_sorted, tgt_sorted = src_lengths[order], tgt_lengths[order]
    widths = np.maximum(src_sorted, tgt_sorted)

    batches: list[np.ndarray] = []
    start = 0
    longest = 0
    for i in range(n):
        candidate = max(longest, int(widths[i]))
        if i > start and candidate * (i - start + 1) > max_tokens:
            batches.append(order[start:i])
            start, longest = i, int(widths[i])
        else:
            longest = candidate
    batches.append(order[start:])
    if rng is not None:
        permutation = rng.permutation(len(batches))
        batches = [batches[k] for k in permutation]
    return batches


def padding_efficiency(batches: list[np.ndarray], src_lengths: np.ndarray, tgt_lengths: np.ndarray) -> float:
    """Real tokens over tokens including padding, both sides together."""
    real = padded = 0
    for b in batches:
        s, t = src_lengths[b], tgt_lengths[b]
        real += int(s.sum() + t.sum())
        padded += len(b) * int(s.max() + t.max())
    return real / padded if padded else 1.0


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The part of a batch that one DDP rank computes: every world_size-th sentence."""
    return batch[rank::world_size]


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
