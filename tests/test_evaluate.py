"""Scores agree with the sacrebleu command line; misaligned files are a clear user error."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.cli import main
from nmt.errors import NMTError
from nmt.evaluate import corpus_bleu, format_scores, score_corpus, score_files

SACREBLEU = Path(sys.executable).parent / "sacrebleu"


def noisy_copies(n: int, seed: int) -> tuple[list[str], list[str]]:
    """References and hypotheses that share some words: mid-range scores, where disagreements would show."""
    rng = random.Random(seed)
    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "Über", "naïve", "run", "ran", ",", ".", "it's", "5.3%"]
    refs, hyps = [], []
    for _ in range(n):
        ref = rng.choices(words, k=rng.randint(1, 12))
        hyp = [w if rng.random() < 0.7 else rng.choice(words) for w in ref if rng.random() < 0.9]
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp) + rng.choice(["", " ", "\t"]))  # trailing blanks, as the CLI strips them
    return refs, hyps


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("seed", range(3))
def test_scores_agree_with_the_sacrebleu_command_line(seed: int, tmp_path: Path) -> None:
    refs, hyps = noisy_copies(60, seed)
    ref_file, hyp_file = write(tmp_path / "ref.txt", refs), write(tmp_path / "hyp.txt", hyps)
    out = subprocess.run([str(SACREBLEU), str(ref_file), "-i", str(hyp_file), "-b", "-w", "4", "-m", "bleu", "chrf",
                          "ter"], capture_output=True, text=True, check=True).stdout
    bleu, chrf, ter = json.loads(out)
    scores = score_files(ref_file, hyp_file)
    assert scores["bleu"] == pytest.approx(bleu, abs=0.01)
    assert scores["chrf"] == pytest.approx(chrf, abs=0.01)
    assert scores["ter"] == pytest.approx(ter, abs=0.01)
    assert 5 < scores["bleu"] < 95  # a mid-range score, not a trivial 0 or 100


def test_cli_score_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    refs, hyps = noisy_copies(20, 7)
    ref_file, hyp_file = write(tmp_path / "ref.txt", refs), write(tmp_path / "hyp.txt", hyps)
    assert main(["score", "-r", str(ref_file), "-i", str(hyp_file), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"bleu", "chrf", "ter", "signature"}
    assert set(scores["signature"]) == {"bleu", "chrf", "ter"}
    assert "tok:13a" in scores["signature"]["bleu"]
    assert main(["score", "-r", str(ref_file), "-i", str(hyp_file)]) == 0
    text = capsys.readouterr().out
    assert text == format_scores(scores) + "\n"
    assert all(scores["signature"][k] in text for k in ("bleu", "chrf", "ter"))


def test_misaligned_files_exit_2_naming_both_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ref_file = write(tmp_path / "ref.txt", ["a b", "c d", "e f"])
    hyp_file = write(tmp_path / "hyp.txt", ["a b", "c d"])
    assert main(["score", "-r", str(ref_file), "-i", str(hyp_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "2 lines" in err and "has 3" in err and "hyp.txt" in err and "ref.txt" in err


def test_empty_files_are_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(NMTError, match="empty"):
        score_files(write(tmp_path / "r.txt", []), write(tmp_path / "h.txt", []))


def test_corpus_bleu_for_validation() -> None:
    refs, hyps = noisy_copies(30, 3)
    assert corpus_bleu(hyps, refs) == pytest.approx(score_corpus(hyps, refs)["bleu"])
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert corpus_bleu([], []) == 0.0
