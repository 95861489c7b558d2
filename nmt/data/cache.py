"""Encoded corpora held as flat integer arrays plus offsets, cached on disk by content hash.

A list of Python lists costs about 100 bytes per token; a flat uint16 array costs 2. That is the difference
between a 5-million-pair corpus fitting in a few hundred MB and not fitting at all.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmt.data.corpus import CleaningReport, keep_pair
from nmt.data.subword import Subword
from nmt.errors import NMTError

log = logging.getLogger(__name__)

_CHUNK = 20_000


@dataclass
class EncodedCorpus:
    """Token ids of both sides, without bos/eos; sentence i of a side is `tokens[offsets[i]:offsets[i+1]]`."""

    src_tokens: np.ndarray  # (total_src_tokens,) uint16 or int32
    src_offsets: np.ndarray  # (n + 1,) int64
    tgt_tokens: np.ndarray
    tgt_offsets: np.ndarray
    line_numbers: np.ndarray  # (n,) int64: 1-based line of each pair in the raw corpus

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets)

    def src(self, i: int) -> np.ndarray:
        return self.src_tokens[self.src_offsets[i] : self.src_offsets[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self.tgt_tokens[self.tgt_offsets[i] : self.tgt_offsets[i + 1]]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.src_tokens, self.src_offsets, self.tgt_tokens, self.tgt_offsets))

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                src_tokens=self.src_tokens,
                src_offsets=self.src_offsets,
                tgt_tokens=self.tgt_tokens,
                tgt_offsets=self.tgt_offsets,
                line_numbers=self.line_numbers,
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "EncodedCorpus":
        try:
            with open(path, "rb") as f, np.load(f) as arrays:  # np.load(path) leaks the file on a bad zip
                return cls(**{name: arrays[name] for name in arrays.files})
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
            raise NMTError(f"{path}: damaged cache file ({err}); delete it and run `nmt prepare` again") from None


class _Growing:
    """An append-only array that doubles its capacity, so that building it costs O(n)."""

    def __init__(self, dtype: np.dtype):
        self.data = np.empty(1 << 16, dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + len(values)
        if need > len(self.data):
            grown = np.empty(max(need, 2 * len(self.data)), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = values
        self.size = need

    def array(self) -> np.ndarray:
        return self.data[: self.size].copy()


def encode_pairs(
    pairs: Iterable[tuple[str, str]],
    src_model: Subword,
    tgt_model: Subword,
    clean: tuple[int, float, bool] | None = None,
) -> tuple[EncodedCorpus, CleaningReport]:
    """Encode a stream of pairs in chunks; `clean` = (max_len, max_ratio, drop_empty) drops pairs by subword length."""
    # ids run from 0 to len - 1, so a 65536-piece vocabulary still fits uint16
    dtype = np.uint16 if max(len(src_model), len(tgt_model)) - 1 <= np.iinfo(np.uint16).max else np.int32
    src_tok, tgt_tok = _Growing(dtype), _Growing(dtype)
    src_len, tgt_len, lines = _Growing(np.int64), _Growing(np.int64), _Growing(np.int64)
    report = CleaningReport()
    line_no = 0

    def flush(chunk: list[tuple[str, str]], first_line: int) -> None:
        src_ids = src_model.encode([s for s, _ in chunk])
        tgt_ids = tgt_model.encode([t for _, t in chunk])
        kept_src, kept_tgt, kept_lines = [], [], []
        for k, (s, t) in enumerate(zip(src_ids, tgt_ids)):
            if clean is not None:
                reason = keep_pair(len(s), len(t), *clean)
                if reason:
                    report.drop(reason)
                    continue
            kept_src.append(s)
            kept_tgt.append(t)
            kept_lines.append(first_line + k)
        report.kept += len(kept_src)
        src_tok.extend(np.fromiter(itertools.chain.from_iterable(kept_src), dtype=dtype))
        tgt_tok.extend(np.fromiter(itertools.chain.from_iterable(kept_tgt), dtype=dtype))
        src_len.extend(np.fromiter(map(len, kept_src), dtype=np.int64, count=len(kept_src)))
        tgt_len.extend(np.fromiter(map(len, kept_tgt), dtype=np.int64, count=len(kept_tgt)))
        lines.extend(np.asarray(kept_lines, dtype=np.int64))

    chunk: list[tuple[str, str]] = []
    for pair in pairs:
        chunk.append(pair)
        line_no += 1
        if len(chunk) == _CHUNK:
            flush(chunk, line_no - len(chunk) + 1)
            chunk = []
    if chunk:
        flush(chunk, line_no - len(chunk) + 1)

    def offsets(lengths: np.ndarray) -> np.ndarray:
        out = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out[1:])
        return out

    corpus = EncodedCorpus(
        src_tokens=src_tok.array(),
        src_offsets=offsets(src_len.array()),
        tgt_tokens=tgt_tok.array(),
        tgt_offsets=offsets(tgt_len.array()),
        line_numbers=lines.array(),
    )
    return corpus, report


def hash_files(paths: Iterable[Path], extra: str = "") -> str:
    """A content hash of the files (and a description string), for cache keys."""
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        except FileNotFoundError:
            raise NMTError(f"file not found: {path}") from None
    return digest.hexdigest()[:16]


def hash_bytes(*blobs: bytes) -> str:
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(hashlib.sha256(blob).digest())
    return digest.hexdigest()[:16]
