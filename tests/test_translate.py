"""`nmt translate`: files and stdin in, translations out, line for line; the command round-trips a file."""

from __future__ import annotations

import functools
import io
import json
import logging
import re
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import nmt.translate
from nmt.checkpoint import load_trained_model
from nmt.cli import main
from nmt.translator import Translator
from translation_fixtures import make_checkpoint, synthetic_sentences, tiny_spm

CPU = torch.device("cpu")
POOL = synthetic_sentences(12, seed=3) + ["", "   ", "ka"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", seed=2)


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    lines = synthetic_sentences(7, seed=5)
    lines[2] = ""
    lines.append("")
    path = tmp_path / "input.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_translate(checkpoint: Path, input_file: Path, output: Path, *extra: str) -> list[str]:
    assert main(["translate", "-c", str(checkpoint), "-i", str(input_file), "-o", str(output), "-q",
                 "--device", "cpu", "--dtype", "fp32", *extra]) == 0
    return output.read_text(encoding="utf-8").split("\n")[:-1]


def test_cli_translate_round_trips_a_file(checkpoint: Path, input_file: Path, tmp_path: Path) -> None:
    inputs = input_file.read_text(encoding="utf-8").split("\n")[:-1]
    outputs = run_translate(checkpoint, input_file, tmp_path / "out.txt")
    trained = load_trained_model(checkpoint)
    expected = Translator([trained], trained.config.decode, CPU, torch.float32).translate_lines(inputs)
    assert outputs == [hyps[0].text for hyps in expected]
    assert [o == "" for o in outputs] == [i == "" for i in inputs]


def test_cli_translate_stdin_to_stdout(checkpoint: Path, input_file: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    expected = run_translate(checkpoint, input_file, tmp_path / "out.txt")
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(input_file.read_bytes()), encoding="utf-8"))
    assert main(["translate", "-c", str(checkpoint), "-q", "--device", "cpu", "--dtype", "fp32"]) == 0
    assert capsys.readouterr().out.split("\n")[:-1] == expected


def test_cli_translate_nbest_lines(checkpoint: Path, input_file: Path, tmp_path: Path) -> None:
    n_inputs = len(input_file.read_text(encoding="utf-8").split("\n")) - 1
    lines = run_translate(checkpoint, input_file, tmp_path / "nbest.txt", "--beam", "4", "--nbest", "3")
    parsed = [line.split(" ||| ") for line in lines]
    assert all(len(p) == 3 for p in parsed)
    indices = [int(p[0]) for p in parsed]
    assert sorted(set(indices)) == list(range(n_inputs)) and indices == sorted(indices)
    for i in set(indices):
        scores = [float(p[2]) for p in parsed if int(p[0]) == i]
        assert scores == sorted(scores, reverse=True)


def test_cli_nbest_widens_the_checkpoint_beam_unless_a_beam_is_given(checkpoint: Path, input_file: Path,
                                                                     tmp_path: Path) -> None:
    assert load_trained_model(checkpoint).config.decode.beam == 3
    lines = run_translate(checkpoint, input_file, tmp_path / "nbest.txt", "--nbest", "4")
    inputs = input_file.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == sum(4 if line else 1 for line in inputs)
    assert main(["translate", "-c", str(checkpoint), "-i", str(input_file), "-q", "--beam", "2", "--nbest", "3"]) == 2


def test_cli_translate_writes_alignments(checkpoint: Path, input_file: Path, tmp_path: Path) -> None:
    outputs = run_translate(checkpoint, input_file, tmp_path / "out.txt", "--alignments",
                            str(tmp_path / "align.jsonl"))
    records = [json.loads(line) for line in (tmp_path / "align.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(outputs) == len(input_file.read_text(encoding="utf-8").split("\n")) - 1  # a line out per line in
    assert [r["index"] for r in records] == list(range(len(outputs)))
    for record, output in zip(records, outputs):
        if output == "":
            assert record["source"] == record["target"] == record["attention"] == []
            continue
        assert record["source"][-1] == record["target"][-1] == "</s>"
        assert len(record["attention"]) == len(record["target"])
        for row in record["attention"]:
            assert len(row) == len(record["source"])
            assert sum(row) == pytest.approx(1.0, abs=1e-3)


def test_cli_sampling_is_reproducible(checkpoint: Path, input_file: Path, tmp_path: Path) -> None:
    def sampled(temperature: float, seed: int) -> list[str]:
        return run_translate(checkpoint, input_file, tmp_path / f"t{temperature}-s{seed}.txt",
                             "--temperature", str(temperature), "--seed", str(seed))

    first = sampled(1.2, seed=7)
    assert sampled(1.2, seed=7) == first
    assert sampled(1.2, seed=8) != first  # --seed reaches the sampler
    # --temperature reaches it too: near 0 the distribution is all on the best token, so sampling is greedy
    greedy = run_translate(checkpoint, input_file, tmp_path / "greedy.txt", "--beam", "1")
    assert sampled(1e-6, seed=7) == greedy != first


def test_cli_ensemble_of_a_checkpoint_with_itself(checkpoint: Path, input_file: Path, tmp_path: Path) -> None:
    single = run_translate(checkpoint, input_file, tmp_path / "single.txt")
    assert run_translate(checkpoint, input_file, tmp_path / "double.txt", "-c", str(checkpoint)) == single


def test_cli_ensemble_needs_one_vocabulary(checkpoint: Path, input_file: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    other = make_checkpoint(tmp_path / "other.pt", seed=3, spm=tiny_spm(vocab_size=40, seed=1))
    rc = main(["translate", "-c", str(checkpoint), "-c", str(other), "-i", str(input_file), "-q"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(other) in err and "SentencePiece" in err


def test_cli_translate_missing_input_is_a_user_error(checkpoint: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert main(["translate", "-c", str(checkpoint), "-i", str(tmp_path / "nope.txt"), "-q"]) == 2
    assert "nope.txt" in capsys.readouterr().err


@functools.lru_cache(maxsize=1)
def _fuzz_checkpoint() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="nmt-fuzz-"))
    return make_checkpoint(folder / "model.pt", seed=2)


# Text lines (some from the model's own syllables) as UTF-8, and arbitrary bytes, which are mostly invalid UTF-8.
_TEXT_FILES = st.lists(st.sampled_from(POOL) | st.text(max_size=20), max_size=8).map(lambda ls: "\n".join(ls).encode())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT_FILES | st.binary(max_size=300))
@example(b"ka lo\n\nmi zu\r\n")
@example(b"ka lo\ncaf\xe9\n")
def test_translate_fuzz_random_bytes_translate_or_fail_as_a_user_error(data: bytes) -> None:
    """Any input file either translates (valid UTF-8: one output line per input line) or is refused (invalid
    UTF-8, or a damaged gzip stream: exit 2 and one stderr line naming the file and line), never with a
    traceback."""
    with tempfile.TemporaryDirectory(prefix="nmt-fuzz-in-") as folder:
        source, out = Path(folder) / "in.txt", Path(folder) / "out.txt"
        source.write_bytes(data)
        err = io.StringIO()
        stderr, sys.stderr = sys.stderr, err
        try:
            code = main(["translate", "-c", str(_fuzz_checkpoint()), "-i", str(source), "-o", str(out), "-q",
                         "--beam", "2", "--max-len-a", "0", "--max-len-b", "3"])
        finally:
            sys.stderr = stderr
        shown = err.getvalue()
        assert "Traceback" not in shown
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            lines = shown.splitlines()
            assert code == 2 and len(lines) == 1, shown
            assert lines[0].startswith(f"nmt translate: error: {source} line ")
            assert "invalid UTF-8" in lines[0] or "cannot read" in lines[0]  # bytes that start like gzip are read so
        else:
            assert code == 0, shown
            lines_in = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
            assert out.read_bytes().count(b"\n") == lines_in


def test_a_translation_stopped_by_the_output_limit_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = make_checkpoint(tmp_path / "model.pt", seed=5)
    payload = torch.load(checkpoint, weights_only=True)
    payload["model"]["output.bias"][3] = -100.0  # EOS never wins: every line runs to its maximum length
    torch.save(payload, checkpoint)
    source = tmp_path / "in.txt"
    source.write_text("ka\nka lo mi nu pe ri\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="nmt.translator"):
        assert main(["translate", "-c", str(checkpoint), "-i", str(source), "-o", str(tmp_path / "out.txt"), "-q",
                     "--beam", "1", "--max-len-a", "200"]) == 0
    assert [r.getMessage() for r in caplog.records if "limit" in r.getMessage()] == [
        "line 2: the translation stopped at the limit of 1024 subwords"]


def test_lines_typed_one_at_a_time_come_back_one_at_a_time(checkpoint: Path, input_file: Path, tmp_path: Path) -> None:
    """Like fairseq-interactive: each line's translation is written (and flushed) as soon as the line is read;
    the next line is only sent once the previous translation came back."""
    import select
    import subprocess

    from training_fixtures import process_env

    expected = run_translate(checkpoint, input_file, tmp_path / "whole.txt")
    lines = input_file.read_text(encoding="utf-8").split("\n")[:-1]
    process = subprocess.Popen([sys.executable, "-m", "nmt", "translate", "-c", str(checkpoint), "-q", "--device",
                                "cpu", "--dtype", "fp32"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=process_env())
    try:
        got = []
        for line in lines:
            process.stdin.write(line + "\n")
            process.stdin.flush()
            assert select.select([process.stdout], [], [], 60)[0], f"no translation of {line!r} within 60 s"
            got.append(process.stdout.readline().rstrip("\n"))
        process.stdin.close()
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        process.kill()
    assert got == expected


@pytest.mark.parametrize("buffer_lines", ["1", "2", "3"])
def test_small_buffers_change_nothing_but_when_lines_are_written(checkpoint: Path, input_file: Path, tmp_path: Path,
                                                                 buffer_lines: str) -> None:
    whole = run_translate(checkpoint, input_file, tmp_path / "whole.txt")
    assert run_translate(checkpoint, input_file, tmp_path / "small.txt", "--buffer-lines", buffer_lines) == whole


# ----------------------------------------------------------------------------------------------- constraints, prefixes


def _has_word(phrase: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def test_constraints_after_the_source_are_in_the_translation_line_for_line(checkpoint: Path, tmp_path: Path) -> None:
    """fairseq-interactive's format: SOURCE<TAB>PHRASE<TAB>...; line N still translates line N, in chunks too."""
    sources = synthetic_sentences(9, seed=6)
    asked = [["kalo"], [], ["mi zu", "ve"], [], ["nuvepe"], ["ka"], [], ["so"], ["lo", "pe"]]
    source = tmp_path / "in.de"
    source.write_text("".join("\t".join([s, *c]) + "\n" for s, c in zip(sources, asked)), encoding="utf-8")
    outputs = run_translate(checkpoint, source, tmp_path / "out.en", "--constraints", "--buffer-lines", "4")
    trained = load_trained_model(checkpoint)
    alone = Translator([trained], trained.config.decode, CPU, torch.float32)
    assert outputs == [alone.translate(s, constraints=c) for s, c in zip(sources, asked)]
    for phrases, output in zip(asked, outputs):
        assert all(_has_word(p, output) for p in phrases), (phrases, output)


def test_a_prefix_file_starts_each_translation_and_works_with_nbest(checkpoint: Path, input_file: Path,
                                                                    tmp_path: Path) -> None:
    lines = input_file.read_text(encoding="utf-8").split("\n")[:-1]
    prefixes = ["ka lo" if i % 2 else "" for i in range(len(lines))]
    prefix_file = tmp_path / "prefix.en"
    prefix_file.write_text("\n".join(prefixes) + "\n", encoding="utf-8")
    out = run_translate(checkpoint, input_file, tmp_path / "out.en", "--prefix", str(prefix_file), "--nbest", "2",
                        "--buffer-lines", "3")  # the prefix file is read along, chunk by chunk
    parsed = [line.split(" ||| ") for line in out]
    for index, text, _ in parsed:
        if prefixes[int(index)] and lines[int(index)]:
            assert text.startswith("ka lo")
    plain = run_translate(checkpoint, input_file, tmp_path / "plain.en", "--nbest", "2")
    assert [p for p, (i, _, _) in zip(plain, parsed) if not prefixes[int(i)]] == \
        [o for o, (i, _, _) in zip(out, parsed) if not prefixes[int(i)]]  # no prefix: as without --prefix


@pytest.mark.parametrize("lines, extra, says", [
    (["ka\tlo", "mi\t"], ["--constraints"], "in.de line 2: constraint 1: the constraint is empty"),
    (["ka\tlo\tΩ"], ["--constraints"], "in.de line 1: constraint 2: the constraint 'Ω' has characters the target"),
    (["ka\tlo"], ["--constraints", "--temperature", "1"], "need beam search: they cannot be used with --temperature"),
    (["ka", "lo", "mi"], ["--prefix", "PREFIX"], "misaligned: {tmp}/prefix.en has 2 lines but {tmp}/in.de has 3"),
    (["ka"], ["--prefix", "{tmp}/none.en"], "file not found: {tmp}/none.en"),
], ids=["empty constraint", "unknown characters", "with sampling", "prefix file misaligned", "prefix file missing"])
def test_bad_constraints_and_prefixes_are_one_error_naming_file_and_line(lines, extra, says, checkpoint, tmp_path,
                                                                        run_cli, user_error) -> None:
    source = tmp_path / "in.de"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    (tmp_path / "prefix.en").write_text("ka\nlo\n", encoding="utf-8")
    extra = [str(tmp_path / "prefix.en") if e == "PREFIX" else e.format(tmp=tmp_path) for e in extra]
    user_error(run_cli("translate", "-c", checkpoint, "-i", source, "-q", "-o", tmp_path / "out.en", *extra),
               says.format(tmp=tmp_path))
    assert not (tmp_path / "out.en").exists()


def test_a_prefix_file_shorter_than_piped_input_is_named(checkpoint: Path, tmp_path: Path, run_cli, user_error,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a pipe the lines cannot be counted first: the prefix file runs out, or is left over, as it is read."""
    prefix = tmp_path / "prefix.en"
    prefix.write_text("ka\n", encoding="utf-8")
    for text, says in [("ka\nlo\n", f"misaligned: {prefix} has fewer lines than <stdin> (none for line 2)"),
                       ("", f"misaligned: {prefix} has more lines than <stdin> (0)")]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8"))
        user_error(run_cli("translate", "-c", checkpoint, "-q", "--prefix", prefix), says)


def test_an_impossible_constraint_is_a_warning_per_line_and_the_line_is_translated(
        checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "in.de"
    source.write_text("ka\tkata nuvepe sosomi zuveka\nlo mi\tka\n\tlo\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="nmt.translator"):
        out = run_translate(checkpoint, source, tmp_path / "out.en", "--constraints", "--max-len-a", "0",
                            "--max-len-b", "3")
    assert out[0] and _has_word("ka", out[1]) and out[2] == ""
    assert sorted(r.getMessage() for r in caplog.records if "lacks" in r.getMessage()) == [
        "line 1: the translation lacks the constraints 'kata nuvepe sosomi zuveka' (no room within the maximum "
        "output length)", "line 3: the translation lacks the constraints 'lo' (the line is empty)"]


def test_ordered_constraints_come_out_in_their_order(checkpoint: Path, tmp_path: Path) -> None:
    sources = synthetic_sentences(6, seed=8)
    source = tmp_path / "in.de"
    source.write_text("".join(f"{s}\tzuveka\tka\n" for s in sources), encoding="utf-8")
    ordered = run_translate(checkpoint, source, tmp_path / "ordered.en", "--constraints", "--ordered-constraints")
    for output in ordered:
        assert re.search(r"(?<!\w)zuveka(?!\w).*(?<!\w)ka(?!\w)", output), output
    free = run_translate(checkpoint, source, tmp_path / "free.en", "--constraints")
    assert any(re.search(r"(?<!\w)ka(?!\w).*zuveka", output) for output in free)  # the flag made a difference
