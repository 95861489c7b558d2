"""nmt.data.split and `nmt split`: seeded splits in which no key sentence crosses from one split to another."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmt.data.split import split_by_key, split_corpus
from nmt.errors import NMTError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
    return path


def keyed_corpus(n_keys: int, seed: int, max_repeats: int = 4) -> list[tuple[str, str]]:
    """(es, en) pairs where many English sentences have several Spanish translations, in a shuffled order."""
    rng = random.Random(seed)
    pairs = [(f"es {k}.{r}", f"en {k}") for k in range(n_keys) for r in range(rng.randint(1, max_repeats))]
    rng.shuffle(pairs)
    return pairs


def check_partition(keys: list[str], splits: dict[str, list[int]]) -> None:
    every = sorted(i for indices in splits.values() for i in indices)
    assert every == list(range(len(keys))), "every item lands in exactly one split"
    owners: dict[str, str] = {}
    for name, indices in splits.items():
        for i in indices:
            assert owners.setdefault(keys[i], name) == name, f"key {keys[i]!r} occurs in two splits"


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.integers(0, 30).map(str), max_size=120), seed=st.integers(0, 2**32),
       valid=st.integers(0, 40), test=st.integers(0, 40))
def test_split_is_a_partition_by_key(keys: list[str], seed: int, valid: int, test: int):
    if valid + test > len(keys):
        with pytest.raises(NMTError, match="held-out"):
            split_by_key(keys, {"valid": valid, "test": test}, seed)
        return
    splits = split_by_key(keys, {"valid": valid, "test": test}, seed)
    check_partition(keys, splits)
    assert len(splits["valid"]) <= valid and len(splits["test"]) <= test


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sizes_are_exact_when_small_groups_remain(seed: int):
    keys = [en for _, en in keyed_corpus(2000, seed)]
    splits = split_by_key(keys, {"valid": 300, "test": 500}, seed)
    assert (len(splits["valid"]), len(splits["test"])) == (300, 500)
    assert len(splits["train"]) == len(keys) - 800
    check_partition(keys, splits)


def test_same_seed_same_split_other_seed_other_split():
    keys = [en for _, en in keyed_corpus(500, seed=4)]
    first = split_by_key(keys, {"valid": 50, "test": 100}, seed=7)
    assert split_by_key(keys, {"valid": 50, "test": 100}, seed=7) == first
    assert split_by_key(keys, {"valid": 50, "test": 100}, seed=8) != first


def test_split_keeps_corpus_order_within_each_split():
    keys = [en for _, en in keyed_corpus(300, seed=5)]
    for indices in split_by_key(keys, {"valid": 40, "test": 40}, seed=1).values():
        assert indices == sorted(indices)


def test_too_many_held_out_pairs_is_a_user_error():
    with pytest.raises(NMTError, match="only 3"):
        split_by_key(["a", "b", "c"], {"valid": 2, "test": 2}, seed=1)


def test_negative_size_is_a_user_error():
    with pytest.raises(NMTError, match="negative"):
        split_by_key(["a", "b"], {"valid": -1, "test": 0}, seed=1)


# --- Files ---


@pytest.fixture
def corpus_files(tmp_path: Path) -> tuple[Path, Path, list[tuple[str, str]]]:
    pairs = keyed_corpus(400, seed=6)
    es = write_lines(tmp_path / "all.es", [es for es, _ in pairs])
    en = write_lines(tmp_path / "all.en", [en for _, en in pairs])
    return es, en, pairs


def _read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_split_corpus_writes_aligned_files_and_manifest(tmp_path: Path, corpus_files):
    es, en, pairs = corpus_files
    out = tmp_path / "split"
    manifest = split_corpus(str(es), str(en), ("es", "en"), "en", valid=60, test=90, seed=3, out_dir=out)
    written = {name: list(zip(_read(out / f"{name}.es"), _read(out / f"{name}.en"))) for name in
               ("train", "valid", "test")}
    assert sorted(p for split in written.values() for p in split) == sorted(pairs)
    english = {name: {en_ for _, en_ in split} for name, split in written.items()}
    assert not english["test"] & english["train"] and not english["valid"] & english["train"]
    assert not english["test"] & english["valid"]
    assert {name: len(split) for name, split in written.items()} == {
        "train": len(pairs) - 150, "valid": 60, "test": 90}
    on_disk = json.loads((out / "split.json").read_text())
    assert on_disk == manifest
    assert on_disk["seed"] == 3 and on_disk["key"] == "en"
    assert on_disk["sizes"]["test"] == {"pairs": 90, "keys": len(english["test"])}


def test_split_corpus_reuses_an_identical_split_and_redoes_a_changed_one(tmp_path: Path, corpus_files,
                                                                          caplog: pytest.LogCaptureFixture):
    es, en, _ = corpus_files
    out = tmp_path / "split"
    split_corpus(str(es), str(en), ("es", "en"), "en", 60, 90, seed=3, out_dir=out)
    before = (out / "test.en").read_bytes()
    caplog.set_level("INFO")
    split_corpus(str(es), str(en), ("es", "en"), "en", 60, 90, seed=3, out_dir=out)
    assert "reusing the split" in caplog.text
    split_corpus(str(es), str(en), ("es", "en"), "en", 60, 90, seed=4, out_dir=out)
    assert (out / "test.en").read_bytes() != before
    assert json.loads((out / "split.json").read_text())["seed"] == 4


def test_split_corpus_redoes_a_split_whose_files_were_edited(tmp_path: Path, corpus_files):
    es, en, _ = corpus_files
    out = tmp_path / "split"
    split_corpus(str(es), str(en), ("es", "en"), "en", 60, 90, seed=3, out_dir=out)
    good = (out / "valid.es").read_bytes()
    (out / "valid.es").write_text("tampered\n")
    split_corpus(str(es), str(en), ("es", "en"), "en", 60, 90, seed=3, out_dir=out)
    assert (out / "valid.es").read_bytes() == good


def test_cli_split(tmp_path: Path, corpus_files, run_cli):
    es, en, pairs = corpus_files
    out = tmp_path / "split"
    result = run_cli("split", es, en, "--langs", "es", "en", "--key", "en", "--valid", "10", "--test", "20",
                     "--seed", "1", "-o", out)
    assert result.code == 0, result.err
    assert f"train: {len(pairs) - 30} pairs" in result.out and "valid: 10 pairs" in result.out
    assert len(_read(out / "test.es")) == 20


@pytest.mark.parametrize("args, fragment", [
    (["--key", "fr", "--valid", "1", "--test", "1"], "key language 'fr'"),
    (["--key", "en", "--valid", "5000", "--test", "1"], "held-out"),
    (["--key", "en", "--valid", "-2", "--test", "1"], "negative"),
])
def test_cli_split_user_errors(tmp_path: Path, corpus_files, run_cli, user_error, args, fragment):
    es, en, _ = corpus_files
    result = run_cli("split", es, en, "--langs", "es", "en", *args, "-o", tmp_path / "out")
    user_error(result, fragment)


def test_cli_split_missing_file(tmp_path: Path, run_cli, user_error):
    result = run_cli("split", tmp_path / "nope.es", tmp_path / "nope.en", "--langs", "es", "en", "--key", "en",
                     "--valid", "1", "--test", "1", "-o", tmp_path / "out")
    user_error(result, "file not found", "nope.es")
