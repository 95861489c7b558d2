"""nmt.data.collate: where bos, eos and padding go in a batch's tensors."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmt.data.cache import EncodedCorpus
from nmt.data.collate import collate, pad_sources
from nmt.tokens import BOS, EOS, PAD

sentences = st.lists(st.integers(4, 500), max_size=12)  # ids 0-3 are special


def corpus_of(src: list[list[int]], tgt: list[list[int]]) -> EncodedCorpus:
    def flat(side):
        tokens = np.array([i for s in side for i in s], dtype=np.uint16)
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in side])]).astype(np.int64)
        return tokens, offsets

    (st_, so), (tt, to) = flat(src), flat(tgt)
    return EncodedCorpus(st_, so, tt, to, np.arange(1, len(src) + 1, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(pairs=st.lists(st.tuples(sentences, sentences), min_size=1, max_size=10), data=st.data())
def test_bos_eos_and_padding_placement(pairs, data):
    corpus = corpus_of([s for s, _ in pairs], [t for _, t in pairs])
    indices = np.array(data.draw(st.permutations(range(len(pairs)))), dtype=np.int64)
    batch = collate(corpus, indices)

    assert np.array_equal(batch.indices, indices)
    assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == torch.long
    assert batch.src.shape == (len(pairs), max(len(pairs[i][0]) for i in indices) + 1)
    assert batch.tgt_in.shape == batch.tgt_out.shape == (len(pairs), max(len(pairs[i][1]) for i in indices) + 1)
    for row, i in enumerate(indices):
        s, t = pairs[i]
        assert batch.src[row].tolist() == s + [EOS] + [PAD] * (batch.src.shape[1] - len(s) - 1)
        assert batch.src_lengths[row] == len(s) + 1
        padding = [PAD] * (batch.tgt_in.shape[1] - len(t) - 1)
        assert batch.tgt_in[row].tolist() == [BOS] + t + padding
        assert batch.tgt_out[row].tolist() == t + [EOS] + padding
    assert batch.n_tgt_tokens == sum(len(pairs[i][1]) + 1 for i in indices)
    # the mask the model derives from the lengths marks exactly the non-padding positions
    mask = torch.arange(batch.src.shape[1])[None, :] < batch.src_lengths[:, None]
    assert torch.equal(mask, batch.src != PAD)


def test_batch_moves_to_a_device_and_keeps_lengths_on_cpu():
    batch = collate(corpus_of([[5, 6]], [[7]]), np.array([0])).to(torch.device("cpu"))
    assert batch.src.device.type == "cpu" and batch.src_lengths.device.type == "cpu"
    assert batch.tgt_out.tolist() == [[7, EOS]]


def test_pad_sources_of_uint16_ids_above_int16_range():
    ids, lengths = pad_sources([np.array([65535, 40000], dtype=np.uint16), np.array([], dtype=np.uint16)])
    assert ids.tolist() == [[65535, 40000, EOS], [EOS, PAD, PAD]]
    assert lengths.tolist() == [3, 1]
