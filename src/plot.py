"""Training curves (loss, top-1, learning rate) as one PNG, from a run's metrics.jsonl.

matplotlib is used when installed; otherwise a small Pillow renderer draws the same three
panels so every run gets its curves without adding a plotting dependency.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PANEL_W, PANEL_H = 400, 300  # pixels per panel; the image is 3 panels side by side
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 58, 12, 26, 34
N_TICKS = 5
MAX_MARKED_POINTS = 50
COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44))
AXIS_COLOR, GRID_COLOR, TEXT_COLOR = (0, 0, 0), (225, 225, 225), (40, 40, 40)
Series = tuple[str, list[float], list[float]]  # label, xs, ys


def read_curves(metrics_jsonl: str | Path) -> list[tuple[str, list[Series]]]:
    """(title, series) per panel; x is always the (fractional) epoch so the panels line up."""
    records = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
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


def nice_ticks(lo: float, hi: float, count: int = N_TICKS) -> list[float]:
    """Round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    raw = (hi - lo) / max(count - 1, 1)
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _limits(values: list[float]) -> tuple[float, float]:
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.1 or 1.0
    return lo - pad, hi + pad


def _draw_panel(draw: ImageDraw.ImageDraw, x0: int, title: str, series: list[Series], font) -> None:
    left, top, right, bottom = x0 + MARGIN_L, MARGIN_T, x0 + PANEL_W - MARGIN_R, PANEL_H - MARGIN_B
    (xlo, xhi), (ylo, yhi) = _limits([x for s in series for x in s[1]]), _limits([y for s in series for y in s[2]])

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + (x - xlo) / (xhi - xlo) * (right - left), bottom - (y - ylo) / (yhi - ylo) * (bottom - top)

    for y in nice_ticks(ylo, yhi):
        py = to_px(xlo, y)[1]
        draw.line([(left, py), (right, py)], fill=GRID_COLOR)
        draw.text((left - 4, py), f"{y:.3g}", fill=TEXT_COLOR, font=font, anchor="rm")
    for x in nice_ticks(xlo, xhi):
        px = to_px(x, ylo)[0]
        draw.line([(px, bottom), (px, bottom + 4)], fill=AXIS_COLOR)
        draw.text((px, bottom + 6), f"{x:.3g}", fill=TEXT_COLOR, font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=AXIS_COLOR)
    draw.text(((left + right) / 2, 6), title, fill=TEXT_COLOR, font=font, anchor="mt")
    draw.text(((left + right) / 2, PANEL_H - 4), "epoch", fill=TEXT_COLOR, font=font, anchor="mb")
    for i, (label, xs, ys) in enumerate(series):
        color, points = COLORS[i % len(COLORS)], [to_px(x, y) for x, y in zip(xs, ys)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        if len(points) < MAX_MARKED_POINTS:  # dots for sparse series such as per-epoch top-1
            for px, py in points:
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        if len(series) > 1:
            # Legend bottom-right: rising accuracy curves leave that corner empty.
            draw.text((right - 4, bottom - 4 - 12 * (len(series) - 1 - i)), label, fill=color, font=font, anchor="rd")


def draw_curves_pillow(panels: list[tuple[str, list[Series]]], out_png: str | Path) -> Path:
    image = Image.new("RGB", (PANEL_W * len(panels), PANEL_H), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for i, (title, series) in enumerate(panels):
        _draw_panel(draw, i * PANEL_W, title, series, font)
    image.save(out_png)
    return Path(out_png)


def draw_curves_matplotlib(panels: list[tuple[str, list[Series]]], out_png: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dpi = 100
    fig, axes = plt.subplots(1, len(panels), figsize=(PANEL_W * len(panels) / dpi, PANEL_H / dpi), dpi=dpi)
    for ax, (title, series) in zip(axes, panels):
        for i, (label, xs, ys) in enumerate(series):  # the Pillow renderer's colours, series by series
            ax.plot(xs, ys, marker="o" if len(xs) < MAX_MARKED_POINTS else None, markersize=3, label=label,
                    color=tuple(c / 255 for c in COLORS[i % len(COLORS)]))
        ax.set_title(title), ax.set_xlabel("epoch"), ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return Path(out_png)


def save_curves_png(metrics_jsonl: str | Path, out_png: str | Path, backend: str = "auto") -> Path:
    """Draw loss / top-1 / LR panels; ``backend`` is 'auto', 'matplotlib' or 'pillow'."""
    panels = read_curves(metrics_jsonl)
    if backend == "auto":
        try:
            import matplotlib  # noqa: F401
            backend = "matplotlib"
        except ImportError:
            backend = "pillow"
    draw = {"matplotlib": draw_curves_matplotlib, "pillow": draw_curves_pillow}[backend]
    return draw(panels, out_png)
