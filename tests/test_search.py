"""Search on tiny random models: properties that hold whatever the weights are."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from nmt.data.collate import pad_sources
from nmt.tokens import BOS, EOS, PAD
from nmt.errors import NMTError
from nmt.config import DecodeConfig
from nmt.search import Hypothesis, Search, max_lengths
from nmt.tokens import MAX_LINE_SUBWORDS
from translation_fixtures import tiny_model


VARIANTS = [
    dict(cell="gru", attention="bahdanau"),
    dict(cell="lstm", attention="general", input_feeding=False),
    dict(cell="gru", attention="dot", bridge="mean", tie_embeddings="decoder"),
    dict(cell="lstm", attention="none", bridge="zero"),
]


def search(models, src, lengths, with_attention=False, generator=None, **options) -> list[list[Hypothesis]]:
    """What `nmt translate` runs with these decoding options."""
    return Search(DecodeConfig(**options)).generate(models, src, lengths, with_attention, generator)


def greedy_search(models, src, lengths, **options) -> list[list[Hypothesis]]:
    return Search(DecodeConfig(beam=1, **options)).greedy_search(models, src, lengths)


def beam_search(models, src, lengths, beam: int, **options) -> list[list[Hypothesis]]:
    """The beam path whatever the beam, 1 included."""
    return Search(DecodeConfig(beam=beam, **options)).beam_search(models, src, lengths)


def random_sources(vocab: int, n: int, seed: int, max_len: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return pad_sources([rng.integers(4, vocab, size=rng.integers(1, max_len + 1)) for _ in range(n)])


def one_each(hyps: list[list], src: torch.Tensor) -> list[list]:
    """`hyps` after checking that the search returned one list per source sentence: a loop over `zip` with a
    short result would check fewer sentences and pass."""
    assert len(hyps) == src.size(0), (len(hyps), src.size(0))
    return hyps


def sequence_log_probs(model, src: torch.Tensor, src_lengths: torch.Tensor, seqs: list[list[int]]) -> torch.Tensor:
    """Teacher-forced model score of each `seqs[i]` + EOS given source row 0 of `src`: (len(seqs),)."""
    n, width = len(seqs), max(len(s) for s in seqs) + 1
    tgt_in = torch.full((n, width), PAD, dtype=torch.long)
    tgt_out = torch.full((n, width), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        tgt_in[i, 0] = BOS
        tgt_in[i, 1 : len(s) + 1] = torch.tensor(s, dtype=torch.long)
        tgt_out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        tgt_out[i, len(s)] = EOS
    with torch.inference_mode():
        log_probs = torch.log_softmax(model(src[:1].expand(n, -1), src_lengths[:1].expand(n), tgt_in).float(), -1)
    picked = log_probs.gather(2, tgt_out.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (n, width)
    return picked.masked_fill(tgt_out == PAD, 0.0).sum(1)


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("length_penalty", ["average", "gnmt"])
def test_beam_one_equals_greedy(variant: int, length_penalty: str) -> None:
    model = tiny_model(17, seed=variant, **VARIANTS[variant])
    src, lengths = random_sources(17, 6, seed=variant)
    options = dict(alpha=0.8, length_penalty=length_penalty, max_len_a=1.0, max_len_b=3)
    greedy = one_each(greedy_search([model], src, lengths, **options), src)
    beam = one_each(beam_search([model], src, lengths, 1, **options), src)
    for g, b in zip(greedy, beam):
        assert g[0].tokens == b[0].tokens
        assert g[0].score == pytest.approx(b[0].score, abs=1e-5)
        assert g[0].log_prob == pytest.approx(b[0].log_prob, abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("length_penalty", ["none", "average"])
def test_wide_beam_finds_the_brute_force_best(seed: int, length_penalty: str) -> None:
    """Vocabulary 6 leaves UNK, 4, 5 and EOS as outputs: 121 sequences of at most 4 tokens. A beam wider than
    that keeps every prefix alive, so its n-best list must be the brute-force ranking."""
    model = tiny_model(6, seed=seed, **VARIANTS[seed % len(VARIANTS)])
    src, lengths = random_sources(6, 1, seed=seed, max_len=5)
    seqs = [list(s) for n in range(5) for s in itertools.product([1, 4, 5], repeat=n)]
    log_probs = sequence_log_probs(model, src, lengths, seqs).double()
    lengths_with_eos = torch.tensor([len(s) + 1 for s in seqs], dtype=torch.double)
    scores = log_probs / (lengths_with_eos if length_penalty == "average" else 1.0)
    expected = [seqs[i] for i in scores.argsort(descending=True)[:5].tolist()]

    found = beam_search([model], src, lengths, 128, nbest=5, alpha=1.0, length_penalty=length_penalty,
                        max_len_a=0.0, max_len_b=4, min_len=0)[0]
    assert [h.tokens for h in found] == expected
    assert found[0].score == pytest.approx(float(scores.max()), abs=1e-4)


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_reported_scores_are_the_model_scores(variant: int) -> None:
    model = tiny_model(13, seed=10 + variant, **VARIANTS[variant])
    src, lengths = random_sources(13, 4, seed=variant)
    hyps = one_each(beam_search([model], src, lengths, 4, nbest=4, alpha=0.6, max_len_a=1.0, max_len_b=2), src)
    for i, sentence in enumerate(hyps):
        expected = sequence_log_probs(model, src[i : i + 1], lengths[i : i + 1], [h.tokens for h in sentence])
        for h, lp in zip(sentence, expected.tolist()):
            assert h.log_prob == pytest.approx(lp, abs=1e-4)
            assert h.score == pytest.approx(lp / (len(h.tokens) + 1) ** 0.6, abs=1e-4)


def test_beam_scores_at_least_greedy_except_for_rare_search_errors() -> None:
    """Beam search is not exact: greedy's prefix can fall out of the beam, and then (rarely) greedy's whole
    sentence scores higher. So the guarantee is statistical on random models: beam >= greedy on nearly every
    sentence and on the total, never by a wide margin the other way on average. (Exactness when the beam covers
    every prefix is `test_wide_beam_finds_the_brute_force_best`.)"""
    worse = total = 0
    beam_sum = greedy_sum = 0.0
    for seed in range(12):
        vocab = 8 + seed % 5
        model = tiny_model(vocab, seed=seed, **VARIANTS[seed % len(VARIANTS)])
        src, lengths = random_sources(vocab, 4, seed=seed)
        options = dict(alpha=0.0, length_penalty="none", max_len_a=1.0, max_len_b=3, min_len=0)
        greedy = one_each(greedy_search([model], src, lengths, **options), src)
        for k in (2, 4):
            for g, b in zip(greedy, one_each(beam_search([model], src, lengths, k, **options), src)):
                total += 1
                worse += b[0].log_prob < g[0].log_prob - 1e-5
                beam_sum += b[0].log_prob
                greedy_sum += g[0].log_prob
    assert worse <= 0.05 * total
    assert beam_sum > greedy_sum


@pytest.mark.parametrize("length_penalty", ["none", "average"])
def test_beam_with_greedy_floor_never_scores_below_greedy(length_penalty: str) -> None:
    for seed in range(12):
        vocab = 8 + seed % 5
        model = tiny_model(vocab, seed=seed, **VARIANTS[seed % len(VARIANTS)])
        src, lengths = random_sources(vocab, 4, seed=seed)
        options = dict(alpha=0.0 if length_penalty == "none" else 1.0, length_penalty=length_penalty,
                       max_len_a=1.0, max_len_b=3, min_len=0)
        greedy = one_each(greedy_search([model], src, lengths, **options), src)
        for k in (2, 4):
            beam = one_each(search([model], src, lengths, beam=k, nbest=2, greedy_floor=True, **options), src)
            for g, b in zip(greedy, beam):
                assert b[0].score >= g[0].score - 1e-6
                assert b[0].score >= b[-1].score


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("beam", [1, 4])
def test_a_sentence_alone_equals_it_inside_a_batch(variant: int, beam: int) -> None:
    model = tiny_model(19, seed=20 + variant, **VARIANTS[variant])
    src, lengths = random_sources(19, 5, seed=variant, max_len=9)
    options = dict(beam=beam, nbest=beam, alpha=1.0, max_len_a=1.0, max_len_b=3, with_attention=True)
    batched = one_each(search([model], src, lengths, **options), src)
    for i in range(src.size(0)):
        alone_src = src[i : i + 1, : int(lengths[i])]
        alone = search([model], alone_src, lengths[i : i + 1], **options)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        for a, b in zip(alone, batched[i]):
            assert a.score == pytest.approx(b.score, abs=1e-5)
            if a.attention is not None:
                assert a.attention.shape == (len(a.tokens) + 1, int(lengths[i]))
                torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_nbest_lists_are_sorted_and_distinct(seed: int) -> None:
    model = tiny_model(11, seed=seed)
    src, lengths = random_sources(11, 5, seed=seed)
    hyps = search([model], src, lengths, beam=5, nbest=5, alpha=1.0, max_len_a=1.0, max_len_b=3)
    for sentence in one_each(hyps, src):
        scores = [h.score for h in sentence]
        assert len(sentence) == 5
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in sentence}) == len(sentence)


@pytest.mark.parametrize("beam", [1, 3])
def test_lengths_stay_within_min_and_max(beam: int) -> None:
    model = tiny_model(9, seed=3)
    src, lengths = random_sources(9, 6, seed=3)
    hyps = search([model], src, lengths, beam=beam, nbest=beam, max_len_a=0.5, max_len_b=2, min_len=3)
    for i, sentence in enumerate(one_each(hyps, src)):
        longest = max(3, math.floor(0.5 * int(lengths[i]) + 2))
        assert all(3 <= len(h.tokens) <= longest for h in sentence)


def test_finished_sentences_leave_the_batch() -> None:
    """A short sentence stops early; from then on the decoder only computes the long sentence's rows."""
    model = tiny_model(9, seed=4)
    with torch.no_grad():
        model.output.bias[EOS] = -100.0  # EOS only when forced: every sentence runs to its maximum length
    rows: list[int] = []
    step = model.decoder.step

    def counting_step(prev, *args):
        rows.append(prev.size(0))
        return step(prev, *args)

    model.decoder.step = counting_step
    src, lengths = pad_sources([np.array([4]), np.arange(4, 9).repeat(3)])  # max lengths 2 and 16
    for beam in (1, 3):
        rows.clear()
        one_each(search([model], src, lengths, beam=beam, max_len_a=1.0, max_len_b=0, min_len=0), src)
        assert rows == [2 * beam] * 3 + [beam] * 14


def test_coverage_penalty_is_computed_from_the_attention() -> None:
    model = tiny_model(11, seed=5)
    src, lengths = random_sources(11, 3, seed=5)
    hyps = search([model], src, lengths, beam=3, nbest=3, alpha=1.0, coverage_penalty=0.4,
                           max_len_a=1.0, max_len_b=2, with_attention=True)
    for sentence in one_each(hyps, src):
        for h in sentence:
            coverage = h.attention.double().sum(0).clamp(max=1.0)
            expected = h.log_prob / (len(h.tokens) + 1) + 0.4 * float(coverage.log().sum())
            assert h.score == pytest.approx(expected, abs=1e-4)


def test_sampling_is_deterministic_for_a_seed() -> None:
    model = tiny_model(15, seed=6)
    src, lengths = random_sources(15, 6, seed=6)

    def draw(seed: int, **options) -> list[list[list[int]]]:
        generator = torch.Generator().manual_seed(seed)
        hyps = search([model], src, lengths, beam=1, nbest=3, temperature=1.5,
                               generator=generator, max_len_a=1.0, max_len_b=3, **options)
        return [[h.tokens for h in sentence] for sentence in one_each(hyps, src)]

    assert draw(1) == draw(1)
    assert draw(1, topk=4) == draw(1, topk=4)
    assert draw(1) != draw(2)


def test_sampling_from_the_top_token_only_is_greedy() -> None:
    model = tiny_model(15, seed=7)
    src, lengths = random_sources(15, 5, seed=7)
    greedy = one_each(greedy_search([model], src, lengths, max_len_a=1.0, max_len_b=3), src)
    sampled = one_each(search([model], src, lengths, temperature=0.7, topk=1, max_len_a=1.0, max_len_b=3,
                              generator=torch.Generator().manual_seed(0)), src)
    assert [s[0].tokens for s in sampled] == [g[0].tokens for g in greedy]
    assert [s[0].log_prob for s in sampled] == pytest.approx([g[0].log_prob for g in greedy], abs=1e-5)


@pytest.mark.parametrize("beam", [1, 4])
def test_an_ensemble_of_a_model_with_itself_equals_the_model(beam: int) -> None:
    model = tiny_model(13, seed=8, cell="lstm")
    src, lengths = random_sources(13, 5, seed=8)
    options = dict(beam=beam, nbest=beam, max_len_a=1.0, max_len_b=3, with_attention=True)
    single = one_each(search([model], src, lengths, **options), src)
    double = one_each(search([model, model], src, lengths, **options), src)
    for s, d in zip(single, double):
        assert [h.tokens for h in s] == [h.tokens for h in d]
        assert [h.score for h in s] == pytest.approx([h.score for h in d], abs=1e-5)


def test_an_ensemble_averages_log_probabilities() -> None:
    """Greedy with two different models follows the argmax of their mean log-probabilities at every step."""
    a, b = tiny_model(11, seed=9), tiny_model(11, seed=10, cell="lstm")
    src, lengths = random_sources(11, 1, seed=9)
    (hyp,), = search([a, b], src, lengths, beam=1, max_len_a=1.0, max_len_b=3, min_len=0)
    prefix = hyp.tokens + [EOS]
    forced_eos = len(hyp.tokens) == int(lengths[0]) + 3  # at the maximum length EOS is the only choice
    for t in range(len(prefix) - forced_eos):
        means = []
        for m in (a, b):
            tgt_in = torch.tensor([[BOS] + prefix[:t]])
            with torch.inference_mode():
                means.append(torch.log_softmax(m(src, lengths, tgt_in)[0, -1].float(), -1))
        mean = torch.stack(means).mean(0)
        mean[[PAD, BOS]] = -math.inf
        assert int(mean.argmax()) == prefix[t]


def test_search_leaves_training_mode_as_it_was() -> None:
    model = tiny_model(11, seed=11, dropout=0.5, emb_dropout=0.5)
    src, lengths = random_sources(11, 3, seed=11)
    expected = [h[0].tokens for h in one_each(search([model], src, lengths, beam=3), src)]
    model.train()
    assert [h[0].tokens for h in one_each(search([model], src, lengths, beam=3), src)] == expected
    assert model.training


def test_bad_options_are_user_errors() -> None:
    model = tiny_model(11, seed=12)
    src, lengths = random_sources(11, 2, seed=12)
    with pytest.raises(NMTError, match="nbest"):
        search([model], src, lengths, beam=2, nbest=3)
    with pytest.raises(NMTError, match="beam"):
        search([model], src, lengths, beam=0)
    with pytest.raises(NMTError, match="temperature"):
        search([model], src, lengths, beam=1, temperature=0.0)
    assert search([model], src[:0], lengths[:0], beam=2) == []


def test_no_output_grows_beyond_the_line_limit_whatever_max_len_a_says() -> None:
    """The bound on a line's work (docs/RELIABILITY.md): a model that never ends a sentence stops at 1024."""
    model = tiny_model(9, seed=13)
    with torch.no_grad():
        model.output.bias[EOS] = -100.0
    src, lengths = pad_sources([np.arange(4, 9)])  # 5 subwords + EOS: a * 6 + b = 1546 without the bound
    assert max_lengths(lengths, 256.0, 10, 1).tolist() == [MAX_LINE_SUBWORDS] == [1024]
    (hyp,), = search([model], src, lengths, beam=2, max_len_a=256.0, max_len_b=10)
    assert len(hyp.tokens) == 1024


def test_nucleus_sampling_draws_only_from_the_nucleus() -> None:
    """Every sampled token is among the fewest most likely tokens whose probability reaches topp (at the sample's
    temperature), recomputed here by teacher forcing; topp=1 draws from everything, as without it."""
    model = tiny_model(15, seed=14)
    src, lengths = random_sources(15, 4, seed=14)
    topp, temperature = 0.6, 1.3
    hyps = search([model], src, lengths, beam=1, nbest=4, temperature=temperature, topp=topp, max_len_a=1.0,
                  max_len_b=3, generator=torch.Generator().manual_seed(3))
    checked = 0
    for i, sentence in enumerate(one_each(hyps, src)):
        for h in sentence:
            with torch.inference_mode():
                out = model(src[i : i + 1], lengths[i : i + 1], torch.tensor([[BOS] + h.tokens]))[0].float()
            logits = torch.log_softmax(out, -1).clone()  # (steps, vocab), restricted as the search restricts
            logits[:, [PAD, BOS]] = -math.inf
            logits[0, EOS] = -math.inf  # min_len 1
            ends_at_the_limit = len(h.tokens) == int(lengths[i]) + 3  # there EOS is forced
            for t, token in enumerate(h.tokens + [EOS][: not ends_at_the_limit]):
                probs = torch.softmax(logits[t] / temperature, -1)
                ranked = probs.sort(descending=True).values
                nucleus = int((ranked.cumsum(0) - ranked < topp).sum())  # the fewest reaching topp
                assert int((probs > probs[token]).sum()) < nucleus
                checked += 1
    assert checked > 20

    def draw(**options) -> list:
        out = search([model], src, lengths, beam=1, nbest=3, temperature=temperature, max_len_a=1.0, max_len_b=3,
                     generator=torch.Generator().manual_seed(5), **options)
        return [[h.tokens for h in sentence] for sentence in out]

    assert draw(topp=1.0) == draw() != draw(topp=0.3)


def test_a_tiny_nucleus_is_greedy() -> None:
    model = tiny_model(15, seed=15)
    src, lengths = random_sources(15, 5, seed=15)
    greedy = one_each(greedy_search([model], src, lengths, max_len_a=1.0, max_len_b=3), src)
    sampled = one_each(search([model], src, lengths, temperature=2.0, topp=1e-6, max_len_a=1.0, max_len_b=3,
                              generator=torch.Generator().manual_seed(0)), src)
    assert [s[0].tokens for s in sampled] == [g[0].tokens for g in greedy]
