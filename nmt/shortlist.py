"""A lexical shortlist (after Marian's): each sentence's translation chooses among the target subwords that its
source subwords translate to, plus the most frequent ones, not among the whole vocabulary.

The table is built once from the encoded training data by co-occurrence: for a source subword s, its candidates
are the target subwords t with the highest Dice coefficient 2 c(s, t) / (c(s) + c(t)) over the sentence pairs
(at least two pairs together), so that a word's translation ranks above the frequent words every sentence has;
those frequent words join every shortlist anyway. It lives beside the checkpoint (`nmt shortlist` writes an
`.npz` of integer arrays, read without pickle) and names the SentencePiece models it was built with.

Within a batch the output projection covers the union of its sentences' shortlists, computed once per batch;
each sentence's row is then masked to its own shortlist before the log-softmax, so a sentence's scores depend on
its own shortlist only: it translates the same alone and in any batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.data.cache import EncodedCorpus
from nmt.data.subword import Subword
from nmt.errors import NMTError
from nmt.tokens import BOS, EOS, PAD, UNK

log = logging.getLogger(__name__)


@dataclass
class Shortlist:
    """Candidates per source subword, in CSR form, and the target subwords every sentence may use."""

    offsets: np.ndarray  # (src_vocab + 1,) int64: candidates of s are targets[offsets[s]:offsets[s + 1]]
    targets: np.ndarray  # (n,) int64
    frequent: np.ndarray  # (f,) int64, EOS and UNK included
    src_hash: str  # sha256 of the SentencePiece models it was built with
    tgt_hash: str
    path: str | None = None  # the file it was read from (an input no output may overwrite)

    def columns(self, src: torch.Tensor, src_lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """src (batch, src_len) ids, EOS included -> the batch's target subwords (columns,) sorted, and each
        sentence's own (batch, columns) mask."""
        rows = []
        for ids, length in zip(src.tolist(), src_lengths.tolist()):
            own = [self.frequent] + [self.targets[self.offsets[s]:self.offsets[s + 1]] for s in set(ids[:length])]
            rows.append(np.unique(np.concatenate(own)))
        union = np.unique(np.concatenate(rows))
        mask = np.zeros((len(rows), len(union)), dtype=bool)
        for i, own in enumerate(rows):
            mask[i, np.searchsorted(union, own)] = True
        return torch.from_numpy(union), torch.from_numpy(mask)

    def check_vocabularies(self, src_spm: Subword, tgt_spm: Subword, path: str) -> None:
        if (spm_hash(src_spm), spm_hash(tgt_spm)) != (self.src_hash, self.tgt_hash):
            raise NMTError(f"{path}: this shortlist was built for other SentencePiece models than the checkpoint's")

    def save(self, path: str | os.PathLike) -> None:
        from nmt.outputs import atomic_output

        with atomic_output(path, binary=True) as f:
            np.savez(f, offsets=self.offsets, targets=self.targets, frequent=self.frequent,
                     hashes=np.array([self.src_hash, self.tgt_hash]))


def spm_hash(spm: Subword) -> str:
    return hashlib.sha256(spm.model_bytes).hexdigest()


def build_shortlist(corpus: EncodedCorpus, src_spm: Subword, tgt_spm: Subword, per_source: int = 50,
                    frequent: int = 200, max_pairs: int = 1_000_000) -> Shortlist:
    """The table from (at most `max_pairs` of) the training pairs: `per_source` candidates per source subword
    and the `frequent` most frequent target subwords."""
    n = min(len(corpus), max_pairs)
    src_vocab, tgt_vocab = len(src_spm), len(tgt_spm)
    pairs, src_count, tgt_count = [], np.zeros(src_vocab, np.int64), np.zeros(tgt_vocab, np.int64)
    for i in range(n):
        s, t = np.unique(corpus.src(i).astype(np.int64)), np.unique(corpus.tgt(i).astype(np.int64))
        src_count[s] += 1
        tgt_count[t] += 1
        pairs.append((s[:, None] * tgt_vocab + t[None, :]).ravel())
    keys, together = np.unique(np.concatenate(pairs) if pairs else np.zeros(0, np.int64), return_counts=True)
    s, t = keys // tgt_vocab, keys % tgt_vocab
    keep = together >= 2
    s, t, together = s[keep], t[keep], together[keep]
    dice = 2.0 * together / (src_count[s] + tgt_count[t])
    order = np.lexsort((-dice, s))  # by source, best first
    s, t = s[order], t[order]
    rank = np.arange(len(s)) - np.searchsorted(s, s)  # position within its source's list
    s, t = s[rank < per_source], t[rank < per_source]
    offsets = np.zeros(src_vocab + 1, np.int64)
    np.add.at(offsets, s + 1, 1)
    top = np.argsort(-tgt_count, kind="stable")[:frequent]
    always = np.setdiff1d(np.union1d(top, [EOS, UNK]), [PAD, BOS])
    return Shortlist(np.cumsum(offsets), t, always, spm_hash(src_spm), spm_hash(tgt_spm))


MAX_SHORTLIST_BYTES = 256 << 20


def load_shortlist(path: str | os.PathLike, src_spm: Subword, tgt_spm: Subword) -> Shortlist:
    """Read a table written by `nmt shortlist` (integer arrays only: nothing in it runs) for these models."""
    path = Path(path)
    if not path.is_file():
        raise NMTError(f"shortlist not found: {path}")
    if path.stat().st_size > MAX_SHORTLIST_BYTES:
        raise NMTError(f"{path}: {path.stat().st_size} bytes, more than a shortlist of {MAX_SHORTLIST_BYTES} "
                       "bytes may have")
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
    except (OSError, zipfile.BadZipFile) as err:
        raise NMTError(f"{path}: not a shortlist written by nmt shortlist ({str(err)[:200]})") from None
    if unpacked > MAX_SHORTLIST_BYTES:  # compressed members could inflate far beyond the file's own size
        raise NMTError(f"{path}: {unpacked} bytes unpacked, more than a shortlist of {MAX_SHORTLIST_BYTES} bytes "
                       "may have")
    try:
        with np.load(path, allow_pickle=False) as data:
            table = Shortlist(data["offsets"].astype(np.int64), data["targets"].astype(np.int64),
                              data["frequent"].astype(np.int64), *[str(h) for h in data["hashes"]], str(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NMTError(f"{path}: not a shortlist written by nmt shortlist ({str(err)[:200]})") from None
    table.check_vocabularies(src_spm, tgt_spm, str(path))
    tgt_vocab = len(tgt_spm)
    bad = [name for name, a in (("targets", table.targets), ("frequent", table.frequent))
           if len(a) and (a.min() < 0 or a.max() >= tgt_vocab)]
    if len(table.offsets) != len(src_spm) + 1 or bad or np.any(np.diff(table.offsets) < 0) \
            or table.offsets[-1] != len(table.targets):
        raise NMTError(f"{path}: a damaged shortlist (its arrays do not fit the vocabularies)")
    if EOS not in table.frequent:
        raise NMTError(f"{path}: a damaged shortlist (EOS is not among its frequent subwords: no sentence could end)")
    return table
