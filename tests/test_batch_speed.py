"""tools/batch_speed.py, behind docs/BENCHMARKS.md's figures for searches over few sentences: a run on a tiny
checkpoint, one and two workers, so that a renamed nmt function breaks a test rather than the tool. No timings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from training_fixtures import REPO
from translation_fixtures import make_checkpoint, synthetic_sentences

sys.path.insert(0, str(REPO / "tools"))

import batch_speed  # noqa: E402


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_tool_reports_every_batch_size(workers: str, tmp_path: Path, monkeypatch, capsys) -> None:
    source = tmp_path / "in.txt"
    source.write_text("".join(s + "\n" for s in synthetic_sentences(7, seed=1)), encoding="utf-8")
    checkpoint = make_checkpoint(tmp_path / "model.pt", seed=3)
    monkeypatch.setattr(sys, "argv", ["batch_speed.py", "-c", str(checkpoint), "--input", str(source), "--sizes",
                                      "2", "5", "--repeats", "2", "--threads", "1", "--workers", workers])
    torch_threads = torch.get_num_threads()  # the tool sets it for the process
    try:
        assert batch_speed.main() == 0
    finally:
        torch.set_num_threads(torch_threads)
    out = capsys.readouterr().out
    assert out.startswith("7 sentences, beam 5")
    rows = [line for line in out.splitlines() if "batches of" in line]
    assert [row.split(":")[0].split()[-1] for row in rows] == ["2", "5"]
    assert all(row.count(",") == 1 for row in rows)  # two rounds each
