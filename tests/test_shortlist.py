"""nmt.shortlist: the table finds a word's translation, a sentence's output stays within its own shortlist, and
a sentence translates the same alone and in any batch, in fp32 and in int8."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt.checkpoint import load_trained_model
from nmt.config import DecodeConfig, load_config
from nmt.data.prepare import prepare
from nmt.errors import NMTError
from nmt.shortlist import Shortlist, build_shortlist, load_shortlist
from nmt.tokens import BOS, EOS, PAD, UNK
from nmt.translator import Translator
from translation_fixtures import make_checkpoint, synthetic_sentences

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prepared(tiny_corpus, tmp_path_factory):
    """The tiny synthetic corpus encoded (target word = source word reversed + "o", order reversed)."""
    from conftest import tiny_config_dict
    import yaml

    folder = tmp_path_factory.mktemp("shortlist")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_corpus, folder / "exp")), encoding="utf-8")
    return prepare(load_config(config))


def test_a_words_translation_is_among_its_candidates(prepared, tiny_corpus) -> None:
    table = build_shortlist(prepared.train, prepared.src_model, prepared.tgt_model, per_source=8, frequent=5)
    assert {EOS, UNK} <= set(table.frequent.tolist()) and not {PAD, BOS} & set(table.frequent.tolist())
    found = checked = 0
    for source, target in tiny_corpus.train[:60]:
        for word, translated in zip(source.split(), reversed(target.split())):
            (src_ids,), (tgt_ids,) = prepared.src_model.encode([word]), prepared.tgt_model.encode([translated])
            if len(src_ids) == 1:  # a whole word as one subword: its translation's subwords should be listed
                candidates = set(table.targets[table.offsets[src_ids[0]]:table.offsets[src_ids[0] + 1]].tolist())
                found += all(t in candidates | set(table.frequent.tolist()) for t in tgt_ids)
                checked += 1
    assert checked > 20 and found >= 0.9 * checked


def test_a_saved_table_loads_back_and_only_for_its_vocabularies(prepared, tmp_path, monkeypatch) -> None:
    table = build_shortlist(prepared.train, prepared.src_model, prepared.tgt_model, per_source=5, frequent=10)
    path = tmp_path / "shortlist.npz"
    table.save(path)
    loaded = load_shortlist(path, prepared.src_model, prepared.tgt_model)
    for field in ("offsets", "targets", "frequent"):
        assert np.array_equal(getattr(loaded, field), getattr(table, field))
    other = load_trained_model(make_checkpoint(tmp_path / "other.pt"))
    with pytest.raises(NMTError, match="built for other SentencePiece models"):
        load_shortlist(path, other.src_spm, other.tgt_spm)
    with pytest.raises(NMTError, match="shortlist not found"):
        load_shortlist(tmp_path / "nope.npz", prepared.src_model, prepared.tgt_model)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(NMTError, match="not a shortlist written by nmt shortlist"):
        load_shortlist(tmp_path / "junk.npz", prepared.src_model, prepared.tgt_model)
    damaged = dataclasses.replace(table, targets=table.targets + 10_000)
    damaged.save(tmp_path / "damaged.npz")
    with pytest.raises(NMTError, match="a damaged shortlist"):
        load_shortlist(tmp_path / "damaged.npz", prepared.src_model, prepared.tgt_model)
    bomb = tmp_path / "bomb.npz"  # 2 MB of zeros in a few kilobytes
    np.savez_compressed(bomb, offsets=np.zeros(1 << 18, np.int64))
    with monkeypatch.context() as patch:
        patch.setattr("nmt.shortlist.MAX_SHORTLIST_BYTES", 1 << 20)
        with pytest.raises(NMTError, match="bytes unpacked, more than a shortlist"):
            load_shortlist(bomb, prepared.src_model, prepared.tgt_model)
    endless = dataclasses.replace(table, frequent=table.frequent[table.frequent != EOS])
    endless.save(tmp_path / "endless.npz")
    with pytest.raises(NMTError, match="EOS is not among its frequent subwords"):
        load_shortlist(tmp_path / "endless.npz", prepared.src_model, prepared.tgt_model)


def _random_table(vocab: int, seed: int, per_source: int = 4) -> Shortlist:
    """Random candidates: the search must respect whatever the table says."""
    rng = np.random.default_rng(seed)
    targets = np.concatenate([rng.choice(np.arange(4, vocab), per_source, replace=False) for _ in range(vocab)])
    offsets = np.arange(vocab + 1) * per_source
    return Shortlist(offsets, targets, np.array([EOS, UNK, 4]), "", "")


def _translator(shortlist: Shortlist | None, beam: int, dtype: torch.dtype = torch.float32,
                no_pad_or_bos: bool = False) -> Translator:
    trained = load_trained_model(_translator.checkpoint)
    if no_pad_or_bos:  # as in a trained model: PAD and BOS get no probability (the shortlist leaves them out)
        with torch.no_grad():
            trained.model.output.bias[[PAD, BOS]] = -1e4
    decode = DecodeConfig(beam=beam, nbest=beam, max_len_a=1.0, max_len_b=4, batch_tokens=40)
    return Translator([trained], decode, CPU, dtype, shortlist)


@pytest.fixture(scope="module", autouse=True)
def _checkpoint(tmp_path_factory):
    _translator.checkpoint = make_checkpoint(tmp_path_factory.mktemp("sl") / "model.pt", seed=6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.qint8], ids=["fp32", "bf16", "int8"])
@pytest.mark.parametrize("beam", [1, 3])
def test_a_sentence_alone_equals_it_in_a_batch_and_stays_within_its_shortlist(dtype, beam) -> None:
    vocab = len(load_trained_model(_translator.checkpoint).tgt_spm)
    table = _random_table(vocab, seed=beam)
    translator = _translator(table, beam, dtype)
    sentences = synthetic_sentences(10, seed=4)
    batched = translator.translate_lines(sentences)
    assert len(batched) == len(sentences)
    for sentence, together in zip(sentences, batched):
        (alone,) = translator.translate_lines([sentence])
        assert [h.tokens for h in alone] == [h.tokens for h in together]
        assert [h.score for h in alone] == pytest.approx([h.score for h in together], abs=1e-5)
        source = translator.encode([sentence])[0]
        allowed = set(table.frequent.tolist()) | {t for s in source + [EOS]
                                                  for t in table.targets[table.offsets[s]:table.offsets[s + 1]]}
        assert all(set(h.tokens) <= allowed for h in together)


def test_a_shortlist_of_every_word_changes_nothing() -> None:
    """Every word but PAD and BOS, which a shortlist leaves out (they are never output): where the model gives
    them no probability, as a trained one does, the translations and their scores are the same."""
    vocab = len(load_trained_model(_translator.checkpoint).tgt_spm)
    everything = Shortlist(np.zeros(vocab + 1, np.int64), np.zeros(0, np.int64),
                           np.setdiff1d(np.arange(vocab), [PAD, BOS]), "", "")
    sentences = synthetic_sentences(8, seed=5)
    plain = _translator(None, 3, no_pad_or_bos=True).translate_lines(sentences)
    restricted = _translator(everything, 3, no_pad_or_bos=True).translate_lines(sentences)
    assert len(plain) == len(restricted) == 8
    for a, b in zip(plain, restricted):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


def test_pad_and_bos_in_a_shortlist_are_never_output() -> None:
    """A table that lists PAD and BOS (a hand-made or damaged one) still never yields them, even from a model that
    prefers them to every other word."""
    vocab = len(load_trained_model(_translator.checkpoint).tgt_spm)
    everything = Shortlist(np.zeros(vocab + 1, np.int64), np.zeros(0, np.int64), np.arange(vocab), "", "")
    translator = _translator(everything, 3)
    with torch.no_grad():
        translator.models[0].output.bias[[PAD, BOS]] = 1e4
    results = translator.translate_lines(synthetic_sentences(6, seed=7))
    assert len(results) == 6
    assert all(PAD not in h.tokens and BOS not in h.tokens for hyps in results for h in hyps)


def test_a_constrained_line_is_searched_over_the_whole_vocabulary_and_says_so(caplog) -> None:
    """A constraint's subwords need not be in the source's shortlist: such lines leave it aside, with one warning."""
    vocab = len(load_trained_model(_translator.checkpoint).tgt_spm)
    translator = _translator(Shortlist(np.zeros(vocab + 1, np.int64), np.zeros(0, np.int64),
                                       np.array([EOS, UNK]), "", ""), 3)
    sentences = synthetic_sentences(3, seed=8)
    with caplog.at_level(logging.WARNING, logger="nmt.search"):
        results = translator.translate_lines(sentences, constraints=[["kalo"], ["kalo"], None])
        translator.translate_lines(sentences[:1], constraints=[["kalo"]])
    assert len(results) == 3
    assert all("kalo" in hyps[0].text for hyps in results[:2])
    said = [r for r in caplog.records if "searched over the whole vocabulary" in r.getMessage()]
    assert len(said) == 1


def test_the_command_line_builds_and_uses_a_shortlist(write_config, tmp_path, run_cli, user_error) -> None:
    config = write_config()
    assert run_cli("shortlist", config, "--per-source", "10").code == 0
    table_path = tmp_path / "exp" / "shortlist.npz"
    assert table_path.is_file()
    assert run_cli("train", config, "train.max_updates=2", "--no-test").code == 0
    source = tmp_path / "in.txt"
    source.write_text("\n".join(synthetic_sentences(4, seed=2)) + "\n", encoding="utf-8")
    result = run_cli("translate", "-c", tmp_path / "exp" / "final.pt", "-i", source, "--shortlist", table_path, "-q")
    assert result.code == 0, result.err
    assert len(result.out.splitlines()) == 4
    user_error(run_cli("translate", "-c", _translator.checkpoint, "-i", source, "--shortlist", table_path),
               f"{table_path}: this shortlist was built for other SentencePiece models")
