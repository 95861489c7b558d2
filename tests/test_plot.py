"""Learning curves and attention heatmaps are written as PNG; bad inputs are user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nmt.cli import main
from nmt.errors import NMTError
from nmt.plot import plot_attention, plot_learning_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(exp: Path, records: list[dict]) -> None:
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def training_records(updates: int = 40) -> list[dict]:
    records: list[dict] = []
    for u in range(1, updates + 1):
        records.append({"kind": "train", "update": u, "epoch": 1 + u // 20, "loss": 6.0 / u ** 0.3, "lr": 1e-3,
                        "tok_s": 900.0 + u})
        if u % 10 == 0:
            records.append({"kind": "valid", "update": u, "loss": 5.0 / u ** 0.3, "ppl": 20.0, "bleu": u / 2})
    return records


def test_learning_curves_to_the_default_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_metrics(tmp_path / "exp", training_records())
    assert main(["plot", str(tmp_path / "exp")]) == 0
    out = tmp_path / "exp" / "learning_curves.png"
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert str(out) in capsys.readouterr().out


def test_learning_curves_before_the_first_validation(tmp_path: Path) -> None:
    write_metrics(tmp_path, [r for r in training_records(5) if r["kind"] == "train"])
    out = plot_learning_curves(tmp_path, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and out.read_bytes().startswith(PNG_MAGIC)


def test_missing_empty_or_damaged_metrics_are_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    write_metrics(tmp_path, [])
    with pytest.raises(NMTError, match="empty"):
        plot_learning_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "update": 1}\n{"kind": "tr', encoding="utf-8")
    with pytest.raises(NMTError, match="line 2"):
        plot_learning_curves(tmp_path)


def write_alignments(path: Path) -> Path:
    records = [
        {"index": 0, "source": ["▁ein", "▁Hund", "</s>"], "target": ["▁a", "▁dog", "</s>"],
         "attention": [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]},
        {"index": 1, "source": [], "target": [], "attention": []},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_attention_heatmap(tmp_path: Path) -> None:
    alignments = write_alignments(tmp_path / "align.jsonl")
    assert main(["plot-attention", str(alignments), "--index", "0", "-o", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").read_bytes().startswith(PNG_MAGIC)


def test_attention_heatmap_bad_index_or_empty_sentence(tmp_path: Path) -> None:
    alignments = write_alignments(tmp_path / "align.jsonl")
    with pytest.raises(NMTError, match="has 2 sentences"):
        plot_attention(alignments, 5, tmp_path / "a.png")
    with pytest.raises(NMTError, match="empty"):
        plot_attention(alignments, 1, tmp_path / "a.png")
