"""Token-budget batches from length buckets (indices only; `collate` turns them into tensors).

A batch's cost is `n_sentences * max(longest source, longest target)`, padding included (fairseq's count).
Sorting by (source length, target length) with a random tie-break packs sentences of equal shape together,
so padding stays small while each epoch still sees new batch compositions and a new batch order.
"""

from __future__ import annotations

import numpy as np


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
