"""tools/constraints_eval.py, the measurement of docs/BENCHMARKS.md's constrained-decoding section: its rule for
choosing constraints, and a run on a tiny checkpoint, so that a renamed nmt function breaks a test rather than
the tool. No timings."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from training_fixtures import REPO
from translation_fixtures import make_checkpoint, synthetic_sentences

sys.path.insert(0, str(REPO / "tools"))

import constraints_eval  # noqa: E402


def test_constraints_are_long_reference_words_the_output_lacks() -> None:
    always = lambda word: True  # noqa: E731
    reference = "A skateboarder, in a red shirt, jumps over the stairs near people."
    output = "A man in a red shirt jumps on the stairs."
    assert constraints_eval.choose_constraints(reference, output, always) == ["skateboarder", "people"]
    assert constraints_eval.choose_constraints("The dog's ball.", "A dog.", always) == ["dog's", "ball"]
    assert constraints_eval.choose_constraints("A man.", "A man.", always) == []
    assert constraints_eval.choose_constraints("Two blond kids.", "A blond-haired kid.", lambda w: w != "kids") == []
    assert constraints_eval.occurs("blond", "a blond-haired kid") and not constraints_eval.occurs("blond", "blonde")


def test_the_tool_runs_on_a_tiny_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:
    data = tmp_path / "multi30k"
    data.mkdir()
    for lang, seed in (("de", 1), ("en", 2)):
        text = "".join(s + "\n" for s in synthetic_sentences(12, seed=seed))
        (data / f"test2016.{lang}.gz").write_bytes(gzip.compress(text.encode()))
    checkpoint = make_checkpoint(tmp_path / "model.pt", seed=3)
    monkeypatch.setattr(sys, "argv", ["constraints_eval.py", "-c", str(checkpoint), "--data", str(data),
                                      "--threads", "1", "--repeats", "1", "--json", str(tmp_path / "out.json")])
    constraints_eval.main()
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["sentences"] == 12 and report["constraints"] > 0
    assert 0 < report["constraint_coverage"] <= 1  # the tiny checkpoint allows short outputs only
    assert set(report["seconds"]) == {"unconstrained", "constrained"}
    assert json.loads(capsys.readouterr().out) == report
