"""The run's numbers where people read them: ``summary.csv`` (one row per epoch, as timm writes)
and TensorBoard event files (``tensorboard --logdir runs/``), both in the run folder.

Both go on correctly after a resume: the CSV drops rows after the checkpoint's epoch, and the
event writer purges the events after the checkpoint's step, so no curve doubles up.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.csv"
EVENTS_GLOB = "events.out.tfevents*"  # how SummaryWriter names its event files
SUMMARY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "img_per_s", "epoch_time_s",
                   "broken_images")  # more columns (e.g. ema_val_top1) follow when first logged
TENSORBOARD_NOTE = "note: no TensorBoard event files: tensorboard is not installed (pip install tensorboard)"


class SummaryCsv:
    """One row per epoch, rewritten whole (atomically) whenever a row changes: a few hundred rows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[int, dict[str, Any]] = {}

    def resume(self, epochs_done: int) -> None:
        """Keep the rows of the epochs the checkpoint holds; later ones are trained again."""
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as handle:
                kept = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= epochs_done]
            self.rows = {int(row["epoch"]): row for row in kept}
        self._write()

    def update(self, epoch: int, **values: Any) -> None:
        """Set ``values`` in the row of ``epoch`` (1-based); None leaves a cell empty."""
        self.rows.setdefault(epoch, {"epoch": epoch}).update(values)
        self._write()

    def _columns(self) -> list[str]:
        extra = {key: None for row in self.rows.values() for key in row if key not in SUMMARY_COLUMNS}
        return [*SUMMARY_COLUMNS, *extra]

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._columns(), restval="")
            writer.writeheader()
            writer.writerows(self.rows[epoch] for epoch in sorted(self.rows))
        os.replace(tmp, self.path)


def open_tensorboard(run_dir: str | Path, purge_step: int | None) -> Any:
    """A SummaryWriter into ``run_dir`` (events from ``purge_step`` on are dropped from earlier
    files), or None when the tensorboard package is not installed."""
    try:
        import tensorboard  # noqa: F401  (first, so a hidden or missing package fails here)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir), purge_step=purge_step)


def scalars(record: dict) -> dict[str, float]:
    """A metrics.jsonl record's numbers as TensorBoard tags: 'train/loss', 'epoch/img_per_s',
    'val/top1', 'val_ema/top1'. Counters that place the record (epoch, step) are not curves."""
    kind, tag = record["type"], record.get("tag")
    section = {"step": "train", "epoch": "epoch"}.get(kind, kind if not tag else f"{kind}_{tag}")
    return {f"{section}/{name}": float(value) for name, value in record.items()
            if name not in ("type", "tag", "epoch", "step", "global_step", "epoch_progress")
            and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
