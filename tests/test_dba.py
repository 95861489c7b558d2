"""nmt.dba: beam search with lexical constraints and prefixes, on tiny random models: properties that hold
whatever the weights are."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt.config import DecodeConfig
from nmt.constraints import Phrase, Target, Targets
from nmt.errors import NMTError
from nmt.search import Search
from nmt.tokens import EOS
from constraint_fixtures import satisfies, track
from test_search import VARIANTS, one_each, random_sources, sequence_log_probs
from translation_fixtures import tiny_model

VOCAB = 13
MODELS = {v: tiny_model(VOCAB, seed=40 + v, **VARIANTS[v]) for v in range(len(VARIANTS))}
OPTIONS = dict(alpha=1.0, max_len_a=1.0, max_len_b=8)


def search(model, src, lengths, targets: list[Target | None] | None, continues: torch.Tensor | None = None,
           with_attention: bool = False, **options):
    """`Search.generate` with `targets` (None: the plain search) and these decoding options."""
    decode = DecodeConfig(**{**OPTIONS, **options})
    wrapped = None if targets is None else Targets(targets, continues)
    return one_each(Search(decode).generate([model], src, lengths, with_attention, targets=wrapped), src)


def target_strategy(vocab: int = VOCAB) -> st.SearchStrategy[Target | None]:
    tokens = st.integers(4, vocab - 1)
    phrase = st.builds(lambda ids: Phrase(tuple(ids)), st.lists(tokens, min_size=1, max_size=3))
    target = st.builds(lambda c, p: Target(tuple(c), tuple(p)) if c or p else None,
                       st.lists(phrase, max_size=3), st.lists(tokens, max_size=3))
    return st.one_of(st.none(), target)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(target_strategy(), min_size=1, max_size=6), st.integers(1, 4), st.integers(0, 3),
       st.integers(0, 10_000), st.booleans())
def test_a_sentence_decodes_the_same_alone_as_in_any_batch(targets, beam, variant, seed, ordered) -> None:
    model = MODELS[variant]
    src, lengths = random_sources(VOCAB, len(targets), seed=seed)
    options = dict(beam=beam, nbest=beam, ordered_constraints=ordered, with_attention=True)
    batched = search(model, src, lengths, targets, **options)
    for i, target in enumerate(targets):
        alone = search(model, src[i : i + 1, : int(lengths[i])], lengths[i : i + 1], [target], **options)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-5)
        for a, b in zip(alone, batched[i]):
            assert a.unmet == b.unmet
            if a.attention is not None:
                torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(target_strategy(), min_size=1, max_size=5), st.integers(1, 5), st.integers(0, 3),
       st.integers(0, 10_000), st.booleans())
def test_every_output_starts_with_its_prefix_and_holds_its_constraints(targets, beam, variant, seed,
                                                                      ordered) -> None:
    """With room for them (the maximum length is at least prefix + constraints + 8) and a bank for each number of
    constraint subwords met (beam > their total), the best hypothesis meets every constraint; any n-best
    hypothesis that misses one ran to the maximum length (EOS waits for the constraints). Every hypothesis starts
    with its prefix, and lists as unmet what the tracker finds missing. (A narrower beam promises less: with beam
    1, overlapping constraints such as `5 4` and `5 4 4` twice can lose the way.)"""
    model = MODELS[variant]
    src, lengths = random_sources(VOCAB, len(targets), seed=seed)
    hyps = search(model, src, lengths, targets, beam=beam, nbest=beam, ordered_constraints=ordered)
    for i, (target, sentence) in enumerate(zip(targets, hyps)):
        target = target or Target()
        if beam > sum(len(phrase.ids) for phrase in target.constraints):
            assert sentence[0].unmet == () and satisfies(sentence[0].tokens, target.constraints, ordered)
        for h in sentence:
            assert h.tokens[: len(target.prefix)] == list(target.prefix)
            met = track(h.tokens, target.constraints, ordered)
            assert h.unmet == tuple(j for j, m in enumerate(met) if not m)
            assert h.unmet == () or len(h.tokens) == int(lengths[i]) + 8


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("beam", [1, 2, 4])
def test_with_no_constraint_it_is_plain_beam_search(variant: int, beam: int) -> None:
    """One bank: the same hypotheses, scores and attention as `Search`'s beam and greedy search."""
    model = MODELS[variant]
    src, lengths = random_sources(VOCAB, 6, seed=variant, max_len=9)
    options = dict(beam=beam, nbest=beam, with_attention=True, coverage_penalty=0.2)
    plain, empty = search(model, src, lengths, None, **options), search(model, src, lengths, [None] * 6, **options)
    for p, e in zip(plain, empty):
        assert [h.tokens for h in p] == [h.tokens for h in e]
        assert [h.score for h in p] == pytest.approx([h.score for h in e], abs=1e-5)
        for a, b in zip(p, e):
            torch.testing.assert_close(a.attention, b.attention, atol=1e-6, rtol=0)


def brute_force(model, src, lengths, max_len: int, target: Target) -> list[int]:
    """The best-scoring output (average length penalty) among every sequence of at most `max_len` subwords over
    UNK, 4 and 5 that starts with the prefix and that the tracker counts as meeting every constraint."""
    seqs = [list(s) for n in range(max_len + 1) for s in itertools.product([1, 4, 5], repeat=n)]
    seqs = [s for s in seqs if s[: len(target.prefix)] == list(target.prefix) and all(track(s, target.constraints))]
    scores = sequence_log_probs(model, src, lengths, seqs).double() / torch.tensor([len(s) + 1 for s in seqs])
    return seqs[int(scores.argmax())]


@pytest.mark.parametrize("seed", range(6))
def test_a_beam_wide_enough_for_every_prefix_finds_the_best_constrained_output(seed: int) -> None:
    """Vocabulary 6 leaves UNK, 4, 5 and EOS: a beam of 256 keeps every prefix of at most 4 subwords, in every
    bank, so the search is exhaustive and must return the brute-force best among the outputs that hold the
    constraints and start with the prefix."""
    model = tiny_model(6, seed=seed, **VARIANTS[seed % len(VARIANTS)])
    src, lengths = random_sources(6, 1, seed=seed, max_len=5)
    rng = np.random.default_rng(seed)
    for target in [Target((Phrase((4,)),)), Target((Phrase((5, 4)), Phrase((1,)))), Target(prefix=(5,)),
                   Target((Phrase(tuple(rng.choice([1, 4, 5], size=2))),), (int(rng.choice([1, 4, 5])),))]:
        found = search(model, src, lengths, [target], beam=256, max_len_a=0.0, max_len_b=4, min_len=0)[0][0]
        assert found.tokens == brute_force(model, src, lengths, 4, target), target


@pytest.mark.parametrize("seed", range(6))
def test_constraints_the_best_output_already_holds_change_nothing(seed: int) -> None:
    """With a beam that keeps every prefix, constraints taken from the unconstrained best output leave it as it was
    (with a narrower beam the banks may prune its path: dynamic beam allocation shares the beam out)."""
    model = tiny_model(6, seed=seed, **VARIANTS[seed % len(VARIANTS)])
    src, lengths = random_sources(6, 1, seed=seed, max_len=5)
    options = dict(beam=256, max_len_a=0.0, max_len_b=4, min_len=0)
    (best,), = search(model, src, lengths, None, **options)
    for start, stop in [(0, 1), (1, 3), (0, len(best.tokens))]:
        if best.tokens[start:stop]:
            (found,), = search(model, src, lengths, [Target((Phrase(tuple(best.tokens[start:stop])),))], **options)
            assert found.tokens == best.tokens and found.score == pytest.approx(best.score, abs=1e-6)


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_a_prefix_is_forced_then_the_search_goes_on_and_scores_the_whole_output(variant: int) -> None:
    """Greedy search given the first j subwords of its own output as prefix returns that output; the scores are
    the model's scores of whole outputs, prefix included."""
    model = MODELS[variant]
    src, lengths = random_sources(VOCAB, 5, seed=variant)
    greedy = search(model, src, lengths, None, beam=1)
    for j in range(4):
        prefixed = search(model, src, lengths, [Target(prefix=tuple(g[0].tokens[:j])) for g in greedy], beam=1)
        assert [p[0].tokens for p in prefixed] == [g[0].tokens for g in greedy]
    beam = search(model, src, lengths, [Target(prefix=(7, 5, 9))] * 5, beam=3, nbest=3)
    for i, sentence in enumerate(beam):
        expected = sequence_log_probs(model, src[i : i + 1], lengths[i : i + 1], [h.tokens for h in sentence])
        assert [h.log_prob for h in sentence] == pytest.approx(expected.tolist(), abs=1e-4)


def test_beam_one_meets_the_constraints_too() -> None:
    model = MODELS[1]
    src, lengths = random_sources(VOCAB, 6, seed=3)
    targets = [Target((Phrase((4, 5)), Phrase((12,)))), Target((Phrase((7,)),), (9,))] * 3
    for target, (h,) in zip(targets, search(model, src, lengths, targets, beam=1)):
        assert h.unmet == () and satisfies(h.tokens, target.constraints)


def test_constraints_longer_than_the_maximum_length_are_reported_and_the_sentence_still_translated() -> None:
    model = MODELS[0]
    src, lengths = random_sources(VOCAB, 3, seed=4, max_len=3)
    too_long = Target((Phrase((4, 5, 6)), Phrase((7, 8, 9, 10))))  # 7 subwords; the longest output has 2 + 3
    hyps = search(model, src, lengths, [None, too_long, Target((Phrase((11,)),))], beam=3, nbest=3, max_len_b=2)
    assert hyps[1] and all(len(h.tokens) == int(lengths[1]) + 2 and h.unmet for h in hyps[1])
    assert hyps[0][0].unmet == () and hyps[2][0].unmet == ()


def test_n_best_lists_rank_by_constraints_met_then_score() -> None:
    model = MODELS[2]
    src, lengths = random_sources(VOCAB, 4, seed=5)
    hyps = search(model, src, lengths, [Target((Phrase((4, 5, 6, 7, 8, 9)),))] * 4, beam=4, nbest=4, max_len_b=3)
    for sentence in hyps:
        keys = [(-h.met_subwords, -h.score) for h in sentence]
        assert keys == sorted(keys) and len({tuple(h.tokens) for h in sentence}) == len(sentence)


def test_with_the_word_rule_a_met_phrase_is_never_followed_by_a_continuing_piece() -> None:
    """The model is made to love subword 6 after anything; 6 continues a word. Unchecked, the constraint `4` is
    met as `4 6` (`dog` + `s`); with the word rule the search ends the word after it."""
    model = tiny_model(VOCAB, seed=50)
    with torch.no_grad():
        model.output.bias[6] = 6.0
    src, lengths = random_sources(VOCAB, 5, seed=6)
    phrase = Phrase((4,), word_end=True)
    continues = torch.zeros(VOCAB, dtype=torch.bool)
    continues[6] = True
    unchecked = search(model, src, lengths, [Target((phrase,))] * 5, beam=3)
    assert any(4 in h[0].tokens and not satisfies(h[0].tokens, [phrase], continues={6}) for h in unchecked)
    for (h,) in search(model, src, lengths, [Target((phrase,))] * 5, continues, beam=3):
        assert h.unmet == () and satisfies(h.tokens, [phrase], continues={6})


def test_greedy_floor_keeps_the_constrained_greedy_output_where_it_scores_higher() -> None:
    model = MODELS[3]
    src, lengths = random_sources(VOCAB, 6, seed=7)
    targets = [Target((Phrase((5,)), Phrase((8, 9))))] * 6
    greedy = search(model, src, lengths, targets, beam=1)
    floor = search(model, src, lengths, targets, beam=2, greedy_floor=True)
    for g, f in zip(greedy, floor):
        assert f[0].unmet == () and f[0].score >= g[0].score - 1e-6


def test_sampling_with_constraints_is_a_user_error() -> None:
    src, lengths = random_sources(VOCAB, 2, seed=8)
    with pytest.raises(NMTError, match="need beam search"):
        search(MODELS[0], src, lengths, [Target(prefix=(5,)), None], beam=1, temperature=1.0)


def test_eos_waits_for_the_constraints() -> None:
    """A model that wants to stop at once still writes its constraints first."""
    model = tiny_model(VOCAB, seed=51)
    with torch.no_grad():
        model.output.bias[EOS] = 8.0
    src, lengths = random_sources(VOCAB, 3, seed=9)
    plain = search(model, src, lengths, None, beam=2)
    assert all(len(h[0].tokens) <= 1 for h in plain)
    constrained = search(model, src, lengths, [Target((Phrase((9, 10)),))] * 3, beam=2)
    assert all(h[0].tokens[-2:] == [9, 10] or 9 in h[0].tokens for h in constrained)
    assert all(h[0].unmet == () and not math.isinf(h[0].score) for h in constrained)


def test_a_batch_too_large_for_the_tracker_is_searched_in_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    import nmt.dba

    model = MODELS[0]
    src, lengths = random_sources(VOCAB, 7, seed=10)
    targets = [Target((Phrase((4, 5)), Phrase((6,))))] * 3 + [None, Target(prefix=(7,))] + [None] * 2
    whole = search(model, src, lengths, targets, beam=3, nbest=3)
    calls: list[int] = []
    original = nmt.dba.ConstrainedSearch._search

    def counted(self, models, part_src, *args):
        calls.append(part_src.size(0))
        return original(self, models, part_src, *args)

    monkeypatch.setattr(nmt.dba.ConstrainedSearch, "_search", counted)
    monkeypatch.setattr(nmt.dba, "MAX_TRACKER_STATES", 3 * 6 * 2 * 2)  # two sentences of 2 phrases at beam 3
    parts = search(model, src, lengths, targets, beam=3, nbest=3)
    assert calls == [2, 2, 2, 1]
    assert [[h.tokens for h in s] for s in parts] == [[h.tokens for h in s] for s in whole]
