"""Pictures of a run: learning curves from EXP/metrics.jsonl, and one sentence's attention as a heatmap.

Figures are drawn with matplotlib's object API on the Agg canvas, never through pyplot, so plotting works
without a display and leaves matplotlib's global backend alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nmt.errors import NMTError
from nmt.outputs import atomic_output, check_outputs


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file; a damaged line is reported with its number."""
    path = Path(path)
    if not path.is_file():
        raise NMTError(f"no metrics file: {path} (is this an experiment folder written by nmt train?)")
    records = []
    from nmt.data.corpus import read_lines  # reports invalid UTF-8 with the file and line

    for line_no, line in enumerate(read_lines(path), start=1):
        if True:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise NMTError(f"{path} line {line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise NMTError(f"{path} line {line_no}: expected a JSON object")
            records.append(record)
    if not records:
        raise NMTError(f"{path} is empty: nothing to plot yet")
    return records


def _series(records: list[dict], kind: str, key: str) -> tuple[list[float], list[float]]:
    """(updates, values) of `key` over the records of one kind that have it."""
    points = [(r["update"], r[key]) for r in records
              if r.get("kind") == kind and isinstance(r.get(key), (int, float)) and "update" in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_learning_curves(exp_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Draw train/dev loss, dev BLEU and training tokens/s against updates into a PNG; returns its path
    (EXP/learning_curves.png by default)."""
    exp_dir = Path(exp_dir)
    output = Path(output) if output is not None else exp_dir / "learning_curves.png"
    check_outputs([output], [exp_dir / "metrics.jsonl"])
    records = read_metrics(exp_dir / "metrics.jsonl")
    fig = _figure(12, 3.6)
    loss_ax, bleu_ax, speed_ax = fig.subplots(1, 3)

    for kind, label in (("train", "train"), ("valid", "dev")):
        x, y = _series(records, kind, "loss")
        if x:
            loss_ax.plot(x, y, label=label, marker="o" if kind == "valid" else None, markersize=3)
    loss_ax.set(title="loss", xlabel="update", ylabel="cross-entropy (nats/token)")
    if loss_ax.lines:
        loss_ax.legend()

    x, y = _series(records, "valid", "bleu")
    bleu_ax.plot(x, y, marker="o", markersize=3, color="tab:green")
    bleu_ax.set(title="dev BLEU", xlabel="update", ylabel="BLEU")

    x, y = _series(records, "train", "tok_s")
    speed_ax.plot(x, y, color="tab:purple")
    speed_ax.set(title="training speed", xlabel="update", ylabel="target tokens/s")

    for ax in (loss_ax, bleu_ax, speed_ax):
        ax.grid(alpha=0.3)
        if not ax.lines or not len(ax.lines[0].get_xdata()):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle(str(exp_dir))
    return _save(fig, output)


def read_alignment(path: str | os.PathLike, index: int) -> dict:
    """Record `index` (0-based) of a file written by `nmt translate --alignments`."""
    path = Path(path)
    if not path.is_file():
        raise NMTError(f"alignments file not found: {path}")
    if index < 0:
        raise NMTError(f"sentence index must be 0 or more, got {index}")
    count = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            count += 1
            if line_no - 1 != index:
                continue
            try:
                record = json.loads(line)
                source, target, attention = record["source"], record["target"], record["attention"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise NMTError(f"{path} line {line_no}: not an alignment record (source, target, attention)") \
                    from None
            if not source or not target or not attention:
                raise NMTError(f"{path} line {line_no}: sentence {index} is empty, nothing to draw")
            if len(attention) != len(target) or any(len(row) != len(source) for row in attention):
                raise NMTError(f"{path} line {line_no}: attention is not {len(target)} x {len(source)}")
            return record
    raise NMTError(f"{path} has {count} sentences; index {index} is out of range")


def plot_attention(alignments_path: str | os.PathLike, index: int, output: str | os.PathLike) -> Path:
    """Heatmap of sentence `index`'s attention: source subwords across, target subwords down."""
    check_outputs([output], [alignments_path])
    record = read_alignment(alignments_path, index)
    source, target = record["source"], record["target"]
    fig = _figure(max(4.0, 0.35 * len(source) + 2), max(3.0, 0.35 * len(target) + 1.5))
    ax = fig.subplots()
    image = ax.imshow(record["attention"], cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), source, rotation=90)
    ax.set_yticks(range(len(target)), target)
    ax.set(xlabel="source", ylabel="target", title=f"sentence {index}")
    fig.colorbar(image, ax=ax, fraction=0.05)
    return _save(fig, Path(output))


def _save(fig, output: Path) -> Path:
    """The figure as a PNG, written whole or not at all (`nmt.outputs.atomic_output`)."""
    with atomic_output(output, binary=True) as f:
        fig.savefig(f, format="png", dpi=120)
    return output
