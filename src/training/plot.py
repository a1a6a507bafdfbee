"""Training curves (loss, top-1, learning rate) as one PNG, from a run's metrics.jsonl.

matplotlib draws them with its Agg canvas (no display needed). It is an optional dependency:
without it ``save_curves_png`` draws nothing and returns None, and the caller says so once.
"""

from __future__ import annotations

import json
from pathlib import Path

PANEL_W, PANEL_H, DPI = 400, 300, 100  # pixels per panel; the image is the panels side by side
MAX_MARKED_POINTS = 50  # sparse series (per-epoch top-1) get a dot per point, dense ones a plain line
COLORS = ("#1f77b4", "#d62728", "#2ca02c")  # series order within a panel: model, EMA, ...
MATPLOTLIB_NOTE = "note: no curves.png: matplotlib is not installed (pip install matplotlib gives the PNG)"
Series = tuple[str, list[float], list[float]]  # label, xs, ys


def read_metrics(metrics_jsonl: str | Path) -> list[dict]:
    """The records in effect: a ``resume`` record drops what the interrupted run logged after the
    checkpoint it resumed from (later steps, epochs and validations), as the run redid them."""
    records: list[dict] = []
    for line in Path(metrics_jsonl).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["type"] == "resume":
            records = [r for r in records if not _after_checkpoint(r, rec["epoch"], rec["global_step"])]
        else:
            records.append(rec)
    return records


def _after_checkpoint(rec: dict, epochs_done: int, global_step: int) -> bool:
    if rec["type"] == "step":
        return rec["global_step"] > global_step
    return rec["epoch"] > epochs_done  # epoch and val records: 1-based epoch numbers


def read_curves(metrics_jsonl: str | Path) -> list[tuple[str, list[Series]]]:
    """(title, series) per panel; x is always the (fractional) epoch so the panels line up."""
    records = read_metrics(metrics_jsonl)
    steps = [r for r in records if r["type"] == "step" and r.get("loss") is not None]
    progress = [r["epoch_progress"] for r in steps]
    top1: dict[str, Series] = {}
    for rec in (r for r in records if r["type"] == "val" and r.get("top1") is not None):
        tag = rec.get("tag") or "model"
        _, xs, ys = top1.setdefault(tag, (tag, [], []))
        xs.append(rec["epoch"])  # 1-based: validation after epoch N sits at x = N, where its steps end
        ys.append(rec["top1"])
    return [("train loss", [("loss", progress, [r["loss"] for r in steps])]),
            ("val top-1", list(top1.values())),
            ("learning rate", [("lr", progress, [r["lr"] for r in steps])])]


def save_curves_png(metrics_jsonl: str | Path, out_png: str | Path) -> Path | None:
    """Draw the loss / top-1 / LR panels into ``out_png``; None when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401  (first, so a hidden or missing package fails here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    panels = read_curves(metrics_jsonl)
    fig = Figure(figsize=(PANEL_W * len(panels) / DPI, PANEL_H / DPI), dpi=DPI, layout="tight")
    FigureCanvasAgg(fig)  # Agg, not pyplot: no display, no global figure state
    for ax, (title, series) in zip(fig.subplots(1, len(panels)), panels):
        for color, (label, xs, ys) in zip(COLORS * len(series), series):
            ax.plot(xs, ys, marker="o" if len(xs) < MAX_MARKED_POINTS else None, markersize=3, label=label,
                    color=color)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(loc="lower right")  # rising accuracy curves leave that corner empty
    fig.savefig(out_png, dpi=DPI)
    return Path(out_png)
