"""nmt.translator: the one decode path. Order and empty lines kept, long lines cut and named, options checked
in the caller's terms, and the Python API's string-in, string-out convenience."""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nmt
from nmt.checkpoint import TrainedModel, load_trained_model
from nmt.config import DecodeConfig
from nmt.errors import NMTError
from nmt.glossary import Glossary
from nmt.tokens import MAX_LINE_SUBWORDS
from nmt.translator import Translation, Translator
from translation_fixtures import make_checkpoint, synthetic_sentences

POOL = synthetic_sentences(12, seed=3) + ["", "   ", "ka"]
DECODE = DecodeConfig(beam=3, max_len_a=1.0, max_len_b=3)
CPU = torch.device("cpu")


@functools.lru_cache(maxsize=1)
def checkpoint_path() -> Path:
    return make_checkpoint(Path(tempfile.mkdtemp(prefix="nmt-translator-")) / "model.pt", seed=1)


@functools.lru_cache(maxsize=1)
def trained() -> TrainedModel:
    """One model for the whole module (hypothesis cannot use function-scoped fixtures)."""
    return load_trained_model(checkpoint_path())


def translator(decode: DecodeConfig = DECODE, batch_tokens: int = 40) -> Translator:
    return Translator([trained()], dataclasses.replace(decode, batch_tokens=batch_tokens), CPU, torch.float32)


@functools.lru_cache(maxsize=None)
def alone(sentence: str) -> tuple[list[int], float]:
    (hyp,) = translator().translate_lines([sentence])[0]
    return hyp.tokens, hyp.score


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(POOL), max_size=10), st.integers(min_value=1, max_value=80))
def test_order_and_empty_lines_are_kept(sentences: list[str], batch_tokens: int) -> None:
    results = translator(batch_tokens=batch_tokens).translate_lines(sentences)
    assert len(results) == len(sentences)
    for sentence, hyps in zip(sentences, results):
        assert len(hyps) == 1
        if not sentence.strip():
            assert hyps[0].text == "" and hyps[0].tokens == []
        else:
            tokens, score = alone(sentence)
            assert hyps[0].tokens == tokens
            assert hyps[0].score == pytest.approx(score, abs=1e-5)


def test_empty_input_gives_empty_output() -> None:
    assert translator().translate_lines([]) == []


def test_batches_come_back_with_their_positions_and_cover_every_sentence() -> None:
    sentences = POOL * 2
    seen: list[int] = []
    for positions, translations in translator(batch_tokens=20).iter_translations(translator().encode(sentences)):
        assert len(positions) == len(translations)
        seen += positions
    assert sorted(seen) == list(range(len(sentences)))


def test_a_long_line_is_truncated_with_a_warning_not_dropped(caplog: pytest.LogCaptureFixture) -> None:
    long_line = " ".join(synthetic_sentences(400, seed=9))
    ids = trained().src_spm.encode([long_line])[0]
    assert len(ids) > MAX_LINE_SUBWORDS == 1024
    with caplog.at_level(logging.WARNING, logger="nmt.translator"):
        results = translator(DecodeConfig(beam=2, max_len_a=0.0, max_len_b=3)).translate_lines(
            ["ka lo", long_line, "mi"], first_line=41)
    assert len(results) == 3 and all(len(r) == 1 for r in results)
    assert results[1][0].source == ids[:1024] and results[1][0].tokens
    assert [r.message for r in caplog.records if "truncated" in r.message] == [
        f"line 42: {len(ids)} subwords, truncated to the model's limit of 1024"]


def test_nbest_translations_are_sorted() -> None:
    results = translator(DecodeConfig(beam=4, nbest=3, max_len_a=1.0, max_len_b=3)).translate_lines(POOL[:5])
    assert len(results) == 5
    for hyps in results:
        assert len(hyps) == 3 and all(isinstance(h, Translation) for h in hyps)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


# ----------------------------------------------------------------------------------------------- the Python API


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Translator:
    return nmt.load(make_checkpoint(tmp_path_factory.mktemp("api") / "model.pt", seed=4), device="cpu",
                    dtype="fp32")


def test_a_string_gives_a_string_and_a_list_a_list(loaded: Translator) -> None:
    sentences = synthetic_sentences(3, seed=12)
    as_list = loaded.translate(sentences)
    assert isinstance(as_list, list) and len(as_list) == 3
    assert [loaded.translate(s) for s in sentences] == as_list
    assert loaded.translate("") == ""


def test_options_per_call_leave_the_translator_as_it_was(loaded: Translator) -> None:
    sentences = synthetic_sentences(4, seed=13)
    greedy = loaded.translate(sentences, beam=1)
    assert greedy == [hyps[0].text for hyps in loaded.translate_nbest(sentences, beam=1)]
    assert loaded.decode.beam == 3
    assert loaded.translate(sentences) == [hyps[0].text for hyps in loaded.translate_nbest(sentences)]


def test_nbest_alone_widens_the_beam_and_an_explicit_beam_must_hold_it(loaded: Translator) -> None:
    assert loaded.with_options(nbest=5).decode.beam == 5
    assert len(loaded.translate_nbest(["ka lo mi"], nbest=5)[0]) == 5
    with pytest.raises(NMTError, match=r"^nbest 5 needs a beam of at least 5 \(beam is 2\)$"):
        loaded.with_options(nbest=5, beam=2)


@pytest.mark.parametrize("options, message", [
    (dict(beam=0), "beam must be between 1 and 256, got 0"),
    (dict(beam=1.5), "beam: expected an integer, got 1.5"),
    (dict(beam="5"), "beam: expected an integer, got '5'"),
    (dict(beam=5000), "beam must be between 1 and 256, got 5000"),
    (dict(alpha=-0.5), "alpha must be at least 0, got -0.5"),
    (dict(batch_tokens=0), "batch_tokens must be at least 1, got 0"),
    (dict(max_len_a=-1.0, max_len_b=5), "max_len_a must be at least 0, got -1.0"),
    (dict(max_len_a=0.0, max_len_b=0), "max_len_a 0 and max_len_b 0 allow outputs shorter than one subword"),
    (dict(temperature=0.0), "temperature must be greater than 0, got 0.0"),
    (dict(temperature=1.0, topp=0.0), "topp must be greater than 0, got 0.0"),
    (dict(temperature=1.0, topp=1.5), "topp must be at most 1, got 1.5"),
    (dict(beem=4), "unknown decoding option beem; did you mean beam?"),
])
def test_out_of_range_options_are_user_errors_naming_the_option(loaded: Translator, options: dict,
                                                                  message: str) -> None:
    with pytest.raises(NMTError) as error:
        loaded.translate(["ka lo"], **options)
    assert str(error.value).startswith(message)


def test_a_sentence_that_is_not_a_string_is_named(loaded: Translator) -> None:
    with pytest.raises(NMTError, match="sentence 1 is a int"):
        loaded.translate(["ka", 3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.qint8], ids=["fp32", "bf16", "int8"])
def test_every_dtype_translates_a_sentence_alone_as_inside_a_batch(dtype: torch.dtype) -> None:
    """Batch invariance (the service's exactness rests on it) for every compute dtype, through the Translator."""
    sentences = synthetic_sentences(8, seed=21)
    translator = Translator([load_trained_model(checkpoint_path())], DecodeConfig(beam=3, max_len_a=1.0, max_len_b=3,
                                                                               batch_tokens=40), CPU, dtype)
    together = translator.translate_lines(sentences)
    assert len(together) == len(sentences)
    for sentence, hyps in zip(sentences, together):
        (alone,) = translator.translate_lines([sentence])
        assert alone[0].tokens == hyps[0].tokens
        assert alone[0].score == pytest.approx(hyps[0].score, abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.qint8], ids=["fp32", "bf16", "int8"])
def test_every_dtype_streams_a_sentence_as_it_translates_it_alone(dtype: torch.dtype) -> None:
    """Sentences that join a running stream (the service's continuous batching) at different steps end as
    `translate_lines` translates each alone, in every compute dtype; `finish` gives the same texts."""
    sentences = synthetic_sentences(8, seed=22)
    translator = Translator([load_trained_model(checkpoint_path())], DecodeConfig(beam=3, max_len_a=1.0, max_len_b=3),
                            CPU, dtype)
    sources = translator.encode(sentences)
    stream, ended, steps = translator.stream(), {}, 0
    while len(ended) < len(sentences):
        if steps < 4:  # two sentences join at each of the first four steps
            stream.admit(sources[2 * steps: 2 * steps + 2], list(range(2 * steps, 2 * steps + 2)))
        ended.update(stream.step())
        steps += 1
    assert stream.live == 0
    for k, sentence in enumerate(sentences):
        (alone,) = translator.translate_lines([sentence])
        (streamed,) = translator.finish(sources[k], ended[k])
        assert (streamed.tokens, streamed.text, streamed.source) == (alone[0].tokens, alone[0].text, alone[0].source)
        assert streamed.score == pytest.approx(alone[0].score, abs=1e-4)


# ----------------------------------------------------------------------------------------------- constraints, prefixes


def _has_word(phrase: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def test_constraints_and_prefixes_through_the_api(loaded: Translator) -> None:
    sentences = synthetic_sentences(4, seed=14)
    one = loaded.translate(sentences[0], constraints=["kalo", "mi zu"], prefix="ta")
    assert one.startswith("ta") and _has_word("kalo", one) and _has_word("mi zu", one)
    texts = loaded.translate(sentences, constraints=[["kalo"], None, [], ["nu"]], prefix=[None, "so ve", None, ""])
    assert texts[0] == loaded.translate(sentences[0], constraints=["kalo"])  # a sentence as alone
    assert _has_word("kalo", texts[0]) and texts[1].startswith("so ve") and _has_word("nu", texts[3])
    assert texts[2] == loaded.translate(sentences[2])  # nothing asked: the plain search
    glossary = Glossary.from_pairs([(sentences[1].split()[0], "zuzu")])
    best = loaded.translate_nbest(sentences[:2], glossary=glossary, nbest=2)
    assert _has_word("zuzu", best[1][0].text) and best[1][0].unmet == [] and not _has_word("zuzu", best[0][0].text)


def test_a_constraint_without_room_is_named_per_line_and_the_line_still_translated(
        loaded: Translator, caplog: pytest.LogCaptureFixture) -> None:
    sentences = ["ka", "lo mi"]
    with caplog.at_level(logging.WARNING, logger="nmt.translator"):
        hyps = loaded.translate_nbest(sentences, constraints=[["kata nuvepe sosomi zuveka mizuso"], ["mi"]],
                                      max_len_a=0.0, max_len_b=3)
    assert hyps[0][0].text and hyps[0][0].unmet == ["kata nuvepe sosomi zuveka mizuso"] and hyps[1][0].unmet == []
    warned = [r.getMessage() for r in caplog.records if "lacks the constraints" in r.getMessage()]
    assert warned == ["line 1: the translation lacks the constraints 'kata nuvepe sosomi zuveka mizuso' (no room "
                      "within the maximum output length)"]


@pytest.mark.parametrize("call, message", [
    (lambda t: t.translate("ka", constraints="kalo"), "line 1: constraints must be a list of strings"),
    (lambda t: t.translate("ka", constraints="kalo", glossary=Glossary.from_pairs([("ka", "lo")])),
     "line 1: constraints must be a list of strings"),
    (lambda t: t.translate("ka", constraints=[3]), "line 1: constraint 1: the constraint must be a string"),
    (lambda t: t.translate(["ka", "lo"], constraints=[["kalo"]]), "constraints: expected a list with one entry"),
    (lambda t: t.translate(["ka"], prefix="lo"), "prefixes: expected a list with one entry per sentence"),
    (lambda t: t.translate("ka", prefix="Ω"), "line 1: the prefix 'Ω' has characters the target vocabulary lacks"),
    (lambda t: t.translate("ka", constraints=["lo"], temperature=1.0), "need beam search"),
])
def test_bad_constraints_and_prefixes_are_user_errors(loaded: Translator, call, message: str) -> None:
    with pytest.raises(NMTError, match=re.escape(message)):
        call(loaded)
