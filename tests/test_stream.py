"""nmt.stream: a sentence that joins a running search at any step, beside any others, ends with the hypotheses
that `nmt.search` gives it in a batch of its own: the same tokens, scores and attention to rounding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt.config import DecodeConfig
from nmt.search import Search
from nmt.stream import BeamStream, streams
from nmt.tokens import BOS, EOS
from translation_fixtures import tiny_model

VOCAB = 13
CPU = torch.device("cpu")
ARCHITECTURES = [
    dict(cell="gru", attention="bahdanau"),
    dict(cell="lstm", attention="general", input_feeding=False),
    dict(cell="gru", attention="dot", bridge="mean"),
    dict(cell="lstm", attention="none", bridge="zero"),
]
SENTENCE = st.lists(st.integers(min_value=EOS + 1, max_value=VOCAB - 1), min_size=1, max_size=9)


def alone(models: list, decode: DecodeConfig, ids: list[int], with_attention: bool) -> list:
    src = torch.tensor([ids + [EOS]])
    return Search(decode).generate(models, src, torch.tensor([len(ids) + 1]), with_attention)[0]


def run(stream: BeamStream, schedule: list[tuple[int, list[int]]]) -> dict[int, list]:
    """Admit sentence i once `at` steps have run (schedule: (at, ids) in order of `at`); step until all end."""
    results: dict[int, list] = {}
    pending = sorted(enumerate(schedule), key=lambda item: item[1][0])
    steps = 0
    while pending or stream.live:
        joining = [(i, ids) for i, (at, ids) in pending if at <= steps]
        if joining:
            stream.admit([ids for _, ids in joining], [i for i, _ in joining])
            pending = [item for item in pending if item[1][0] > steps]
        results.update(stream.step())
        steps += 1
        assert steps < 1000
    return results


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(ARCHITECTURES))),
       st.lists(st.tuples(st.integers(min_value=0, max_value=12), SENTENCE), min_size=1, max_size=7),
       st.sampled_from([2, 3]), st.sampled_from([1, 2]), st.sampled_from([0, 3]), st.sampled_from([0.0, 0.4]),
       st.booleans())
def test_a_sentence_joining_at_any_step_gets_what_it_gets_alone(arch: int, schedule, beam: int, nbest: int,
                                                                 min_len: int, coverage: float,
                                                                 with_attention: bool) -> None:
    models = [tiny_model(VOCAB, seed=3, **ARCHITECTURES[arch])]
    decode = DecodeConfig(beam=beam, nbest=nbest, min_len=min_len, max_len_a=1.0, max_len_b=3,
                          coverage_penalty=coverage, alpha=0.6)
    results = run(BeamStream(models, decode, CPU, torch.float32, with_attention), schedule)
    assert sorted(results) == list(range(len(schedule)))
    for i, (_, ids) in enumerate(schedule):
        expected, got = alone(models, decode, ids, with_attention), results[i]
        assert [h.tokens for h in got] == [h.tokens for h in expected]
        # Products over more rows may round differently in the last bits (as in any batch): the same tolerance
        # as the batching tests'.
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-5)
        assert [h.log_prob for h in got] == pytest.approx([h.log_prob for h in expected], abs=1e-5)
        for g, e in zip(got, expected):
            assert (g.attention is None) == (e.attention is None)
            if e.attention is not None:
                torch.testing.assert_close(g.attention, e.attention, atol=1e-5, rtol=0)


def test_an_ensemble_streams_like_it_searches() -> None:
    models = [tiny_model(VOCAB, seed=5), tiny_model(VOCAB, seed=6, cell="lstm")]
    decode = DecodeConfig(beam=3, max_len_a=1.0, max_len_b=3)
    schedule = [(0, [4, 5, 6]), (2, [7, 8, 9, 10, 11, 12]), (2, [5]), (5, [6, 6, 6, 6])]
    results = run(BeamStream(models, decode, CPU, torch.float32), schedule)
    for i, (_, ids) in enumerate(schedule):
        assert [h.tokens for h in results[i]] == [h.tokens for h in alone(models, decode, ids, False)]


def test_a_stream_is_empty_again_once_every_sentence_ends_and_takes_new_ones() -> None:
    models = [tiny_model(VOCAB, seed=3)]
    stream = BeamStream(models, DecodeConfig(beam=2, max_len_a=0.0, max_len_b=2), CPU, torch.float32)
    stream.admit([[4, 5]], ["a"])
    ended = []
    while stream.live:
        ended += stream.step()
    assert [tag for tag, _ in ended] == ["a"] and stream.ens is None and stream.tokens == []
    stream.admit([[6]], ["b"])
    assert stream.live == 1 and stream.prev.tolist() == [BOS, BOS]


@pytest.mark.parametrize("options, ok", [(dict(beam=2), True), (dict(beam=1), False),
                                         (dict(beam=4, temperature=1.0), False),
                                         (dict(beam=4, greedy_floor=True), False)])
def test_only_plain_beam_search_streams(options: dict, ok: bool) -> None:
    assert streams(DecodeConfig(**options), has_shortlist=False) is ok
    assert not streams(DecodeConfig(beam=5), has_shortlist=True)


def test_the_source_padding_of_a_sentence_that_left_is_cut() -> None:
    models = [tiny_model(VOCAB, seed=3)]
    stream = BeamStream(models, DecodeConfig(beam=2, max_len_a=0.0, max_len_b=2), CPU, torch.float32)
    stream.admit([[4] * 9], ["long"])
    stream.step()
    stream.admit([[5, 6]], ["short"])
    assert stream.ens.src_mask.shape == (2, 10)
    ended = []
    while not ended:
        ended = stream.step()
    assert [tag for tag, _ in ended] == ["long"] and stream.live == 1
    assert stream.ens.src_mask.shape == (1, 3)  # 2 subwords and EOS: attention no longer spans the long one


def test_the_sentences_are_kept_in_order_of_source_length_as_they_join_and_leave() -> None:
    """Attention's chunks skip padding only over sentences of like lengths (nmt.model.attention): a stream
    keeps its sentences sorted by source length whatever their arrival order, and each still ends with what it
    gets alone (the joining test above checks every arrival order)."""
    models = [tiny_model(VOCAB, seed=3)]
    decode = DecodeConfig(beam=2, max_len_a=1.0, max_len_b=3)
    stream = BeamStream(models, decode, CPU, torch.float32)
    arrivals = [[[4, 5, 6, 7, 8, 9], [4], [5, 6, 7]], [[8, 9], [4, 4, 4, 4, 4, 4, 4, 4], [6]]]
    for group, sentences in enumerate(arrivals):
        stream.admit(sentences, [(group, i) for i in range(len(sentences))])
        lengths = [s.src_len for s in stream.sentences]
        assert lengths == sorted(lengths)
        assert stream.ens is not None and stream.ens.src_mask.sum(1).tolist() == lengths
        stream.step()
    while stream.live:
        stream.step()
        lengths = [s.src_len for s in stream.sentences]
        assert lengths == sorted(lengths)


def test_sentences_joining_a_running_stream_reuse_its_cast_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recurrent weights are cast once per stream, not again for every joining (3% of a service's search
    time): the joiners decode with the running search's weights; an emptied stream casts them afresh."""
    model = tiny_model(VOCAB, seed=3, **ARCHITECTURES[0])
    casts = []
    original = type(model.decoder).step_weights
    monkeypatch.setattr(type(model.decoder), "step_weights",
                        lambda decoder, device: casts.append(1) or original(decoder, device))
    stream = BeamStream([model], DecodeConfig(beam=2, max_len_a=1.0, max_len_b=3), CPU, torch.float32)
    results = run(stream, [(0, [5, 6]), (1, [7, 8, 9]), (2, [6])])
    assert len(results) == 3 and len(casts) == 1
    run(stream, [(0, [5])])
    assert len(casts) == 2
