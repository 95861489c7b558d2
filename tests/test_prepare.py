"""nmt.data.prepare (`nmt prepare`): SentencePiece models and encoded splits, built once and then reused."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import nmt.data.prepare as prepare_module
from nmt.config import load_config
from nmt.data.prepare import prepare
from nmt.data.subword import Subword
from nmt.errors import NMTError


def _forbid(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        def fail(*args, _name=name, **kwargs):
            raise AssertionError(f"{_name} ran although its inputs did not change")

        monkeypatch.setattr(prepare_module, name, fail)


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k))
               for k in ("src_tokens", "src_offsets", "tgt_tokens", "tgt_offsets", "line_numbers"))


def test_prepare_builds_models_and_cache(write_config, tiny_corpus):
    cfg = load_config(write_config())
    data = prepare(cfg)
    exp = Path(cfg.exp_dir)
    assert (exp / "spm" / "joint.model").is_file() and (exp / "spm" / "key").is_file()
    assert len(list((exp / "cache").glob("train.*.npz"))) == 1
    assert len(list((exp / "cache").glob("valid.*.npz"))) == 1
    assert data.src_model is data.tgt_model and len(data.src_model) <= cfg.data.subword.vocab_size
    assert Subword.load(str(exp / "spm" / "joint.model")).model_bytes == data.src_model.model_bytes
    assert 0 < len(data.train) <= len(tiny_corpus.train)
    assert len(data.valid) == len(tiny_corpus.valid)  # valid is never cleaned
    s, t = tiny_corpus.valid[4]
    assert data.valid.src(4).tolist() == data.src_model.encode([s])[0]
    assert data.valid.tgt(4).tolist() == data.tgt_model.encode([t])[0]
    assert 0 < data.efficiency <= 1


def test_second_run_reuses_everything(write_config, monkeypatch: pytest.MonkeyPatch):
    cfg = load_config(write_config())
    first = prepare(cfg)
    _forbid(monkeypatch, "train_subword", "encode_pairs")
    second = prepare(cfg)
    assert second.src_model.model_bytes == first.src_model.model_bytes
    assert _same(first.train, second.train) and _same(first.valid, second.valid)
    assert second.efficiency == first.efficiency


def test_changed_valid_split_is_reencoded_with_the_same_model(
    write_config, tiny_corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for lang in ("de", "en"):
        shutil.copy(tiny_corpus.path("valid", lang), tmp_path / f"valid.{lang}")
    cfg = load_config(write_config({"data": {"valid": {"src": str(tmp_path / "valid.de"),
                                                        "tgt": str(tmp_path / "valid.en")}}}))
    first = prepare(cfg)
    for lang in ("de", "en"):
        with open(tmp_path / f"valid.{lang}", "a") as f:
            f.write("x y\n")
    _forbid(monkeypatch, "train_subword")
    second = prepare(cfg)
    assert len(second.valid) == len(first.valid) + 1
    assert _same(first.train, second.train)


def test_changed_subword_settings_retrain_the_model(write_config):
    first = prepare(load_config(write_config()))
    second = prepare(load_config(write_config({"data": {"subword": {"vocab_size": 90}}})))
    assert len(second.src_model) <= 90 < len(first.src_model)
    assert second.train.src_tokens.max() < 90


def test_separate_models(write_config):
    cfg = load_config(write_config({"data": {"subword": {"joint": False, "model_type": "bpe"}}}))
    data = prepare(cfg)
    assert {p.name for p in (Path(cfg.exp_dir) / "spm").glob("*.model")} == {"de.model", "en.model"}
    assert data.src_model.model_bytes != data.tgt_model.model_bytes


def test_cleaning_applies_to_train_only(write_config, tiny_corpus):
    data = prepare(load_config(write_config({"data": {"max_len": 8, "max_len_ratio": 0}})))
    src, tgt = data.src_model.encode([s for s, _ in tiny_corpus.train]), data.tgt_model.encode(
        [t for _, t in tiny_corpus.train])
    expected = [n + 1 for n, (s, t) in enumerate(zip(src, tgt)) if max(len(s), len(t)) <= 8]
    assert 0 < len(expected) < len(tiny_corpus.train)
    assert data.train.line_numbers.tolist() == expected
    assert max(data.train.src_lengths.max(), data.train.tgt_lengths.max()) <= 8
    assert len(data.valid) == len(tiny_corpus.valid)


def test_nothing_left_after_cleaning_is_a_user_error(write_config):
    with pytest.raises(NMTError, match=r"train split .* has no usable sentence pairs \(kept 0 of 300 pairs"):
        prepare(load_config(write_config({"data": {"max_len": 1}})))


def test_cli_prepare_prints_efficiency_and_writes_the_resolved_config(run_cli, write_config):
    path = write_config()
    result = run_cli("prepare", path, "train.max_tokens=300")
    assert result.code == 0, result.err
    match = re.search(r"padding efficiency at max_tokens=300: (\d\.\d+)", result.out)
    assert match and 0 < float(match.group(1)) <= 1
    cfg = load_config(path, ["train.max_tokens=300"])
    assert load_config(Path(cfg.exp_dir) / "config.yaml") == cfg


def test_multi30k_efficiency_and_reuse(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The issue's acceptance test: Multi30k de-en at max_tokens 4096, then a second run from the cache."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "multi30k" / "conf" / "base_de_en.yaml"
    monkeypatch.setenv("NMT_DATA_DIR", str(data_dir))
    cfg = load_config(recipe, [f"exp_dir={tmp_path / 'exp'}"])
    assert cfg.train.max_tokens == 4096
    first = prepare(cfg)
    assert first.efficiency >= 0.90
    assert len(first.valid) == 1014 and len(first.train) > 28_000
    _forbid(monkeypatch, "train_subword", "encode_pairs")
    second = prepare(cfg)
    assert second.efficiency == first.efficiency
    assert second.seconds < 0.1 * first.seconds, (first.seconds, second.seconds)
