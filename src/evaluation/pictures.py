"""eval.py's pictures: what the model confuses, how each class fares, and the photos it gets wrong.

Three PNGs for someone deciding whether a model is good enough: a row-normalised confusion matrix
with class names (the MAX_CONFUSION_CLASSES most confused classes when there are more, as for
ImageNet), per-class top-1 as sorted bars with the mean and the worst classes marked, and a grid of
the most confident mistakes (src.evaluation.mistakes), each thumbnail labelled true / predicted /
probability and named by its file.

What is drawn comes from the same EvalResult as eval.json (``confusion_view``, ``per_class_view``),
so the pictures cannot disagree with the numbers; under torchrun rank 0 draws from the reduced
counts. matplotlib draws with its Agg canvas (no display). It is optional: without it
``save_pictures`` draws nothing and returns None, and the caller says so once.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from src.evaluation.metrics import EvalResult
from src.evaluation.mistakes import Mistake

MAX_CONFUSION_CLASSES = 30  # more classes than this: only the most confused ones are drawn
COUNTS_IN_CELLS = 20  # up to this many classes, each non-zero cell shows its count
NAMED_BARS = 60  # up to this many classes, every bar is named; more: the worst ones are listed
MISTAKES_SHOWN = 12  # a 3 x 4 grid; mistakes.csv lists MISTAKES_KEPT
GRID_COLUMNS = 4
CELL_INCHES = (1.45, 1.8)  # a thumbnail (THUMBNAIL px at DPI) with its two title lines and file name
DPI = 100
WORST_COLOR, BAR_COLOR = "#d62728", "#4c72b0"
PICTURES = ("confusion.png", "per_class.png", "mistakes.png")
MATPLOTLIB_NOTE = "note: no eval pictures: matplotlib is not installed (pip install matplotlib gives them)"


@dataclass(frozen=True)
class ConfusionView:
    """The part of the confusion matrix that is drawn: ``counts[i, j]`` images of class ``indices[i]``
    predicted as ``indices[j]``; ``totals[i]`` all images of class ``indices[i]`` (its whole row)."""

    names: list[str]
    indices: list[int]
    counts: np.ndarray
    totals: np.ndarray
    classes: int  # in the whole matrix

    @property
    def rates(self) -> np.ndarray:
        """Rows as fractions of each class's images (0 for a class without images)."""
        return self.counts / np.maximum(self.totals, 1)[:, None]


@dataclass(frozen=True)
class PerClassView:
    """Per-class top-1 of the classes with images, best first, as eval.json's per_class rows."""

    names: list[str]
    accuracy: np.ndarray
    correct: list[int]
    total: list[int]
    mean: float
    worst: list[str]  # eval.json's per_class_summary worst classes


def confusion_view(result: EvalResult, names: Sequence[str], limit: int = MAX_CONFUSION_CLASSES) -> ConfusionView:
    """All classes, or the ``limit`` most confused: most images misclassified from or into them
    (ties: class order), drawn in class order."""
    matrix = result.confusion
    errors = matrix.sum(0) + matrix.sum(1) - 2 * np.diag(matrix)
    order = sorted(range(len(names)), key=lambda i: (-int(errors[i]), i))
    indices = sorted(order[:limit])
    return ConfusionView([str(names[i]) for i in indices], indices, matrix[np.ix_(indices, indices)],
                         matrix.sum(1)[indices], len(names))


def per_class_view(result: EvalResult, names: Sequence[str]) -> PerClassView:
    """eval.json's per_class rows that have images, best first (ties: class order)."""
    rows = [r for r in result.per_class(names) if r["total"]]
    rows.sort(key=lambda r: -r["accuracy"])
    summary = result.per_class_summary(names)
    return PerClassView([r["class"] for r in rows], np.array([r["accuracy"] for r in rows]),
                        [r["correct"] for r in rows], [r["total"] for r in rows], summary["mean"] or 0.0,
                        [r["class"] for r in summary["worst"]])


def save_pictures(result: EvalResult, names: Sequence[str], mistakes: Sequence[Mistake] | None,
                  folder: str | Path) -> list[Path] | None:
    """confusion.png, per_class.png and (when there are ``mistakes``) mistakes.png in ``folder``;
    None when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401  (first, so a hidden or missing package fails here)
    except ImportError:
        return None
    folder = Path(folder)
    written = [draw_confusion(confusion_view(result, names), folder / PICTURES[0]),
               draw_per_class(per_class_view(result, names), folder / PICTURES[1])]
    if mistakes:
        written.append(draw_mistakes(list(mistakes)[:MISTAKES_SHOWN], names, folder / PICTURES[2]))
    return written


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot: no display, no global figure state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def draw_confusion(view: ConfusionView, path: Path) -> Path:
    """The row-normalised matrix, class names on both axes, counts in the cells of small matrices."""
    k = len(view.names)
    side = min(14.0, 2.5 + 0.32 * k)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(view.rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), view.names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), view.names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    scope = f"the {k} most confused of {view.classes} classes" if k < view.classes else f"{k} classes"
    ax.set_title(f"confusion, rows normalised ({scope})", fontsize=10)
    if k <= COUNTS_IN_CELLS:
        for (i, j), count in np.ndenumerate(view.counts):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if view.rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    fig.savefig(path, dpi=DPI)
    return path


def draw_per_class(view: PerClassView, path: Path) -> Path:
    """Sorted bars, best first; the mean as a dashed line, the worst classes in red (named below the
    bars when there are too many to name each)."""
    n = len(view.names)
    colors = [WORST_COLOR if name in view.worst else BAR_COLOR for name in view.names]
    if n <= NAMED_BARS:
        fig = _figure(7.0, 1.2 + 0.24 * n)
        ax = fig.subplots()
        ax.barh(range(n), view.accuracy * 100, color=colors)
        ax.set_yticks(range(n), [f"{name} ({c}/{t})" for name, c, t in zip(view.names, view.correct, view.total)],
                      fontsize=8)
        ax.invert_yaxis()
        ax.axvline(view.mean * 100, color="black", linestyle="--", linewidth=1, label=f"mean {view.mean:.1%}")
        ax.set_xlabel("top-1 (%)")
        ax.set_xlim(0, 100)
    else:
        fig = _figure(10.0, 4.0)
        ax = fig.subplots()
        ax.bar(range(n), view.accuracy * 100, width=1.0, color=colors)
        ax.axhline(view.mean * 100, color="black", linestyle="--", linewidth=1, label=f"mean {view.mean:.1%}")
        ax.set_xlabel(f"{n} classes, best to worst; worst: {', '.join(view.worst)}", fontsize=8)
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 100)
    ax.set_title(f"per-class top-1 (worst {len(view.worst)} in red)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=DPI)
    return path


def draw_mistakes(mistakes: Sequence[Mistake], names: Sequence[str], path: Path) -> Path:
    """A grid of thumbnails, most confident mistake first: true / predicted / probability, file name.
    Saved with a 256-colour palette: photos in a PNG are large, and this picture is for finding them."""
    rows = -(-len(mistakes) // GRID_COLUMNS)
    fig = _figure(CELL_INCHES[0] * GRID_COLUMNS, CELL_INCHES[1] * rows + 0.3)
    axes = np.atleast_1d(fig.subplots(rows, GRID_COLUMNS)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, m in zip(axes, mistakes):
        if m.thumbnail is not None:
            ax.imshow(m.thumbnail)
        ax.set_title(f"true: {names[m.true]}\npred: {names[m.predicted]} ({m.probability:.2f})", fontsize=7)
        ax.text(0.5, -0.03, _short(Path(m.path).name), transform=ax.transAxes, ha="center", va="top", fontsize=6)
    fig.suptitle("most confident mistakes (all paths: mistakes.csv)", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    with Image.open(buffer) as picture:
        picture.convert("RGB").quantize(256).save(path, optimize=True)
    return path


def _short(name: str, keep: int = 26) -> str:
    """A long file name with its middle elided, so it fits under its thumbnail."""
    return name if len(name) <= keep else f"{name[:keep // 2 - 1]}...{name[-(keep // 2 - 2):]}"
