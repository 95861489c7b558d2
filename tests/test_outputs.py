"""nmt.outputs: no command writes over one of its inputs, however the input is named, and a failed or
interrupted write leaves the old file as it was."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from nmt.errors import NMTError
from nmt.outputs import atomic_output, check_outputs
from translation_fixtures import make_checkpoint, synthetic_sentences


@dataclass
class Case:
    """One command, the input it is given, and the argument list with the output option left to fill in."""

    args: list[str]
    input: Path
    stdin: Path | None = None


def _lines(path: Path, n: int, seed: int) -> Path:
    path.write_text("".join(s + "\n" for s in synthetic_sentences(n, seed=seed)), encoding="utf-8")
    return path


def _translate_source(folder: Path) -> Case:
    source = _lines(folder / "in.de", 4, seed=1)
    return Case(["translate", "-c", str(make_checkpoint(folder / "model.pt")), "-i", str(source), "-q", "-o"], source)


def _translate_checkpoint(folder: Path) -> Case:
    checkpoint = make_checkpoint(folder / "model.pt")
    return Case(["translate", "-c", str(checkpoint), "-i", str(_lines(folder / "in.de", 4, seed=1)), "-q", "-o"],
                checkpoint)


def _translate_stdin(folder: Path) -> Case:
    source = _lines(folder / "in.de", 4, seed=1)
    return Case(["translate", "-c", str(make_checkpoint(folder / "model.pt")), "-q", "-o"], source, stdin=source)


def _translate_shortlist(folder: Path) -> Case:
    from nmt.shortlist import Shortlist, spm_hash
    from nmt.translator import Translator

    checkpoint = make_checkpoint(folder / "model.pt")
    translator = Translator.load(checkpoint)
    src_spm, tgt_spm = translator.src_spm, translator.tgt_spm
    every_word = Shortlist(np.zeros(len(src_spm) + 1, np.int64), np.zeros(0, np.int64), np.arange(len(tgt_spm)),
                           spm_hash(src_spm), spm_hash(tgt_spm))
    table = folder / "shortlist.npz"
    every_word.save(table)
    return Case(["translate", "-c", str(checkpoint), "-i", str(_lines(folder / "in.de", 4, seed=1)), "--shortlist",
                 str(table), "-q", "-o"], table)


def _translate_alignments(folder: Path) -> Case:
    source = _lines(folder / "in.de", 4, seed=1)
    return Case(["translate", "-c", str(make_checkpoint(folder / "model.pt")), "-i", str(source), "-q",
                 "-o", str(folder / "out.en"), "--alignments"], source)


def _translate_prefix(folder: Path) -> Case:
    source = _lines(folder / "in.de", 4, seed=1)
    prefixes = _lines(folder / "prefix.en", 4, seed=2)
    return Case(["translate", "-c", str(make_checkpoint(folder / "model.pt")), "-i", str(source), "--prefix",
                 str(prefixes), "-q", "-o"], prefixes)


def _translate_glossary(folder: Path) -> Case:
    source = _lines(folder / "in.de", 4, seed=1)
    glossary = folder / "terms.tsv"
    glossary.write_text("ka\tlo\nmi zu\tve\n", encoding="utf-8")
    return Case(["translate", "-c", str(make_checkpoint(folder / "model.pt")), "-i", str(source), "--glossary",
                 str(glossary), "-q", "-o"], glossary)


def _average(folder: Path) -> Case:
    a, b = make_checkpoint(folder / "a.pt", seed=1), make_checkpoint(folder / "b.pt", seed=2)
    return Case(["average", str(a), str(b), "-o"], b)


def _plot(folder: Path) -> Case:
    exp = folder / "exp"
    exp.mkdir()
    metrics = exp / "metrics.jsonl"
    metrics.write_text(json.dumps({"kind": "train", "update": 1, "loss": 3.0, "tok_s": 10.0}) + "\n")
    return Case(["plot", str(exp), "-o"], metrics)


def _plot_attention(folder: Path) -> Case:
    alignments = folder / "att.jsonl"
    alignments.write_text(json.dumps({"index": 0, "source": ["a", "</s>"], "target": ["b", "</s>"],
                                      "attention": [[0.5, 0.5], [0.1, 0.9]]}) + "\n")
    return Case(["plot-attention", str(alignments), "-o"], alignments)


def _shortlist(folder: Path) -> Case:
    source = _lines(folder / "train.de", 20, seed=1)
    target = _lines(folder / "train.en", 20, seed=2)
    config = folder / "config.yaml"
    config.write_text(json.dumps({"exp_dir": str(folder / "exp"), "data": {
        "train": {"src": str(source), "tgt": str(target)}, "valid": {"src": str(source), "tgt": str(target)}}}))
    return Case(["shortlist", str(config), "-o"], source)


COMMANDS: dict[str, Callable[[Path], Case]] = {
    "translate -i": _translate_source, "translate -c": _translate_checkpoint,
    "translate --alignments -i": _translate_alignments, "translate --prefix": _translate_prefix,
    "translate --glossary": _translate_glossary, "translate --shortlist": _translate_shortlist, "average": _average,
    "plot": _plot, "plot-attention": _plot_attention, "shortlist": _shortlist,
}


def _name_the_input(case: Case, way: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The output argument that names `case.input` the given way."""
    if way == "same path":
        return str(case.input)
    if way == "./ prefix":
        monkeypatch.chdir(case.input.parent)
        return f"./{case.input.name}"
    if way == "symlink":
        link = folder / "link"
        link.symlink_to(case.input)
        return str(link)
    if way == "hard link":
        link = folder / "hard"
        os.link(case.input, link)
        return str(link)
    raise AssertionError(way)


@pytest.mark.parametrize("way", ["same path", "./ prefix", "symlink", "hard link"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_naming_an_input_as_the_output_is_refused_and_the_input_kept(command, way, tmp_path, monkeypatch,
                                                                     run_cli, user_error) -> None:
    case = COMMANDS[command](tmp_path)
    before = case.input.read_bytes()
    output = _name_the_input(case, way, tmp_path, monkeypatch)
    user_error(run_cli(*case.args, output), "is also an input", "writing it would destroy the input")
    assert case.input.read_bytes() == before
    assert sorted(p.name for p in case.input.parent.iterdir() if ".tmp" in p.name) == []


@pytest.mark.parametrize("way", ["same path", "symlink", "hard link"])
def test_the_file_behind_stdin_is_not_an_output_either(way, tmp_path, monkeypatch, run_cli, user_error) -> None:
    case = _translate_stdin(tmp_path)
    before = case.input.read_bytes()
    output = _name_the_input(case, way, tmp_path, monkeypatch)
    with open(case.stdin, encoding="utf-8") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        user_error(run_cli(*case.args, output), "is also an input (standard input)")
    assert case.input.read_bytes() == before


@pytest.mark.parametrize("way", ["same path", "symlink", "hard link"])
def test_split_never_writes_over_the_corpus_it_splits(way, tmp_path, monkeypatch, run_cli, user_error) -> None:
    out = tmp_path / "split"
    out.mkdir()
    src = _lines(out / "train.de", 30, seed=2)
    tgt = _lines(tmp_path / "corpus.en", 30, seed=3)
    before = src.read_bytes()
    # the split writes OUT/train.de, which is the source corpus itself, or the file behind its link
    source = _name_the_input(Case([], src), way, tmp_path, monkeypatch)
    user_error(run_cli("split", source, str(tgt), "--langs", "de", "en", "--key", "en", "--valid", "3", "--test",
                       "3", "-o", str(out)), "is also an input")
    assert src.read_bytes() == before


def test_test_never_writes_over_a_test_set(write_config, tmp_path, run_cli, user_error) -> None:
    (tmp_path / "exp" / "test").mkdir(parents=True)
    hyp = _lines(tmp_path / "exp" / "test" / "tiny.hyp", 5, seed=4)
    config = write_config({"data": {"test": {"tiny": {"src": str(hyp), "tgt": str(hyp)}}}})
    before = hyp.read_bytes()
    user_error(run_cli("test", config, "-c", make_checkpoint(tmp_path / "model.pt")), "is also an input")
    assert hyp.read_bytes() == before


def test_shortlist_never_writes_over_the_models_and_cache_it_reads(tmp_path, run_cli, user_error) -> None:
    case = _shortlist(tmp_path)
    assert run_cli(*case.args, str(tmp_path / "first.npz")).code == 0  # prepares EXP/spm and EXP/cache
    read = sorted((tmp_path / "exp" / "spm").glob("*")) + sorted((tmp_path / "exp" / "cache").glob("*"))
    assert read
    for path in read:
        before = path.read_bytes()
        user_error(run_cli(*case.args, str(path)), "is also an input")
        assert path.read_bytes() == before


def test_two_outputs_naming_one_new_file_are_refused(tmp_path, run_cli, user_error) -> None:
    case = _translate_source(tmp_path)
    same = tmp_path / "same.out"
    user_error(run_cli(*case.args, str(same), "--alignments", str(same)), "are the same file")
    assert not same.exists()


# ----------------------------------------------------------------------------------------------- the writer


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path) -> None:
    path = tmp_path / "keep.en"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_output(path) as f:
            f.write("new, half written")
            raise RuntimeError("the command failed")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.en"]


def test_a_successful_write_replaces_the_file_whole_and_keeps_its_permissions(tmp_path) -> None:
    path = tmp_path / "out.en"
    path.write_text("old\n")
    path.chmod(0o640)
    with atomic_output(path) as f:
        f.write("new\n")
    assert path.read_text() == "new\n" and (path.stat().st_mode & 0o777) == 0o640


def test_through_a_symlink_the_file_it_points_to_is_written_and_the_link_kept(tmp_path) -> None:
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old\n")
    link.symlink_to(target)
    with atomic_output(link) as f:
        f.write("new\n")
    assert link.is_symlink() and target.read_text() == "new\n"


def test_a_device_is_written_in_place_never_replaced(tmp_path) -> None:
    devnull = Path(os.devnull)
    before = devnull.stat()
    with atomic_output(devnull) as f:
        f.write("discarded\n")
    after = devnull.stat()
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev) and devnull.is_char_device()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_full_device_is_one_line_and_stays_a_device() -> None:
    with pytest.raises(NMTError, match="^cannot write /dev/full: No space left on device$"):
        with atomic_output("/dev/full") as f:
            f.write("x" * 100_000)
    assert Path("/dev/full").is_char_device()


def test_a_directory_is_refused(tmp_path) -> None:
    with pytest.raises(NMTError, match="is a directory"):
        with atomic_output(tmp_path):
            pass


def test_a_full_disk_in_the_middle_leaves_the_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "out.en"
    path.write_text("old\n")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(NMTError, match=f"^cannot write {path}: No space left on device$"):
        with atomic_output(path) as f:
            f.write("new\n")
            monkeypatch.setattr(os, "fsync", full)
    monkeypatch.undo()
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.en"]


def test_outputs_are_compared_by_inode_not_by_name(tmp_path) -> None:
    a = tmp_path / "a.txt"
    a.write_text("x\n")
    os.link(a, tmp_path / "b.txt")
    with pytest.raises(NMTError, match="is also an input"):
        check_outputs([tmp_path / "b.txt"], [a])
    check_outputs([tmp_path / "c.txt"], [a])  # a new file is no input
