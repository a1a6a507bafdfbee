"""Training progress: ModelZoo-style log lines, train.log, metrics.jsonl, a tqdm bar, summary.csv,
TensorBoard event files and curves.png.

The line formats follow MindSpore ModelZoo's EfficientNet logs so runs can be compared side by
side, extended with throughput, data-loader wait share and GPU memory, the three numbers that
explain a slow run. metrics.jsonl holds every record; TensorBoard gets the same numbers and
summary.csv one row per epoch. Only the main process prints or writes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from src.training.plot import MATPLOTLIB_NOTE, save_curves_png
from src.training.scalar_logs import SUMMARY_FILE, TENSORBOARD_NOTE, SummaryCsv, open_tensorboard, scalars

LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
LR_FIXED_MIN = 1e-3  # below this a fixed 6-decimal LR would lose digits ('0.000007'), so use e-notation
BYTES_PER_GB = 1e9
MS_PER_S = 1000.0


def format_lr(lr: float) -> str:
    """0.052 -> '0.052000', 7e-06 -> '7.0e-06': small warmup/final LRs stay readable."""
    return f"{lr:.6f}" if lr == 0 or abs(lr) >= LR_FIXED_MIN else f"{lr:.1e}"


def format_step_line(epoch: int, epochs: int, step: int, steps: int, loss: float, avg_loss: float,
                     ms_per_step: float, lr: float, img_per_s: float, data_share: float,
                     mem_gb: float | None = None) -> str:
    """ModelZoo's per-step line (epoch and step 1-based, as everywhere in the logs) plus img/s, data, mem."""
    line = (f"epoch: [{epoch:3d}/{epochs:3d}], step:[{step:5d}/{steps:5d}], "
            f"loss:[{loss:.3f}/{avg_loss:.3f}], time:[{ms_per_step:.1f}], lr:[{format_lr(lr)}], "
            f"img/s:[{img_per_s:.1f}], data:[{data_share * 100:.0f}%]")
    return line if mem_gb is None else f"{line}, mem:[{mem_gb:.2f}GB]"


def format_epoch_line(epoch_ms: float, per_step_ms: float, avg_loss: float, img_per_s: float,
                      broken_images: int = 0) -> str:
    line = (f"epoch time: {epoch_ms:.3f}, per step time: {per_step_ms:.3f}, avg loss: {avg_loss:.3f}, "
            f"img/s: {img_per_s:.1f}")
    return line if broken_images == 0 else f"{line}, broken images: {broken_images}"


def format_val_line(epoch: int, epochs: int, top1: float, top5: float | None, loss: float | None = None,
                    tag: str | None = None) -> str:
    """``val: epoch: [  3/ 30], top-1: 0.98162, top-5: 1.00000, loss: 0.2044``; top-5 only when it means
    something (more than 5 classes: src.common.topk)."""
    name = f"val({tag})" if tag else "val"
    line = f"{name}: epoch: [{epoch:3d}/{epochs:3d}], top-1: {top1:.5f}"
    line += "" if top5 is None else f", top-5: {top5:.5f}"
    return line if loss is None else f"{line}, loss: {loss:.4f}"


def _to_float(value: float | torch.Tensor) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _json_safe(record: dict) -> dict:
    """NaN/inf become null so every line stays valid JSON for strict readers (jq, pandas)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class TrainMonitor:
    """Call ``start_epoch``, ``update`` once per optimizer step, ``end_epoch``, ``log_val``, ``close``
    (and ``resume_from`` first when the run goes on from a checkpoint).

    ``update`` accepts the loss as a tensor and only calls ``.item()`` at log intervals, so it
    does not force a GPU sync every step. ``images`` should be the global batch (all ranks) to
    report the job's throughput. ``tensorboard`` False writes no event files even when the
    package is installed.
    """

    def __init__(self, run_dir: str | Path, epochs: int, steps_per_epoch: int, log_interval: int,
                 is_main: bool = True, use_tqdm: bool | None = None, device: torch.device | None = None,
                 tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.log_interval = max(1, log_interval)
        self.is_main = is_main
        self.use_tqdm = is_main and (sys.stdout.isatty() if use_tqdm is None else use_tqdm)
        self.show_memory = device is not None and torch.device(device).type == "cuda"
        self._bar = None
        self._summary = SummaryCsv(self.run_dir / SUMMARY_FILE)
        self._want_tensorboard, self._tensorboard, self._purge_step = is_main and tensorboard, None, None
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def resume_from(self, epochs_done: int, global_step: int) -> None:
        """Go on after a checkpoint: what the interrupted run logged later is dropped or superseded
        (summary.csv rows, TensorBoard events; metrics.jsonl gets a 'resume' record readers honour)."""
        if not self.is_main:
            return
        self._purge_step = global_step + 1  # events up to the checkpoint's own step stay
        self.record("resume", epoch=epochs_done, global_step=global_step)
        self._summary.resume(epochs_done)

    # --- output -------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        """Print (around the progress bar) and append to train.log."""
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)
        with open(self.run_dir / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def record(self, kind: str, **fields) -> None:
        """One metrics.jsonl line; its numbers also go to TensorBoard at the record's global step."""
        if not self.is_main:
            return
        record = _json_safe({"type": kind, **fields})
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        values = scalars(record)
        writer = self._tensorboard_writer() if values else None
        if writer is not None:
            for tag, value in values.items():
                writer.add_scalar(tag, value, record["global_step"])
            if kind != "step":  # once per epoch: a live `tensorboard` sees each epoch as it ends
                writer.flush()

    def _tensorboard_writer(self) -> Any:
        """The SummaryWriter, opened on first use (after ``resume_from``); None without tensorboard."""
        if self._want_tensorboard and self._tensorboard is None:
            self._want_tensorboard = False  # one try, one note
            self._tensorboard = open_tensorboard(self.run_dir, self._purge_step)
            if self._tensorboard is None:
                self.log(TENSORBOARD_NOTE)
        return self._tensorboard

    # --- per step -----------------------------------------------------------------------------
    def start_epoch(self, epoch: int, first_step: int = 0) -> None:
        """``first_step`` > 0: a resumed epoch keeps its step numbers; averages cover the steps run here."""
        self.epoch, self.step_in_epoch, self._steps_run = epoch, first_step, 0
        self._loss_sum: float | torch.Tensor = 0.0
        self._lr: float | None = None
        self._epoch_start = self._window_start = time.perf_counter()
        self._epoch_images = self._window_images = self._window_steps = 0
        self._window_data = 0.0
        if self.use_tqdm:
            from tqdm import tqdm
            self._bar = tqdm(total=self.steps_per_epoch, initial=first_step, desc=f"epoch {epoch + 1}/{self.epochs}",
                             leave=False, dynamic_ncols=True)

    def update(self, loss: float | torch.Tensor, lr: float, images: int, data_time: float = 0.0) -> None:
        """Account one optimizer step; ``data_time`` is seconds spent waiting for the batch."""
        self.step_in_epoch += 1
        self._steps_run += 1
        self._lr = lr
        loss = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)
        self._loss_sum = self._loss_sum + loss
        self._epoch_images += images
        self._window_images += images
        self._window_steps += 1
        self._window_data += data_time
        if self._bar is not None:
            self._bar.update(1)
        if self.step_in_epoch % self.log_interval == 0 or self.step_in_epoch == self.steps_per_epoch:
            self._log_window(_to_float(loss), lr)

    def _log_window(self, loss: float, lr: float) -> None:
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-9)
        avg_loss = _to_float(self._loss_sum) / self._steps_run
        stats = {"ms_per_step": elapsed * MS_PER_S / self._window_steps, "img_per_s": self._window_images / elapsed,
                 "data_share": min(self._window_data / elapsed, 1.0)}
        mem_gb = torch.cuda.max_memory_allocated() / BYTES_PER_GB if self.show_memory else None
        self.log(format_step_line(self.epoch + 1, self.epochs, self.step_in_epoch, self.steps_per_epoch, loss,
                                  avg_loss, lr=lr, mem_gb=mem_gb, **stats))
        self.record("step", epoch=self.epoch + 1, step=self.step_in_epoch,
                    global_step=self.epoch * self.steps_per_epoch + self.step_in_epoch,
                    epoch_progress=self.epoch + self.step_in_epoch / self.steps_per_epoch,
                    loss=loss, avg_loss=avg_loss, lr=lr, mem_gb=mem_gb, **stats)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{avg_loss:.3f}", lr=format_lr(lr))
        self._window_start, self._window_images, self._window_steps, self._window_data = now, 0, 0, 0.0

    # --- per epoch ----------------------------------------------------------------------------
    def end_epoch(self, broken_images: int = 0) -> dict:
        """Log the epoch summary and return it (avg_loss feeds schedulers / early stopping)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        epoch_ms = (time.perf_counter() - self._epoch_start) * MS_PER_S
        steps = max(self._steps_run, 1)
        summary = {"epoch": self.epoch + 1, "global_step": self.epoch * self.steps_per_epoch + self.step_in_epoch,
                   "epoch_time_ms": epoch_ms, "per_step_ms": epoch_ms / steps,
                   "avg_loss": _to_float(self._loss_sum) / steps, "lr": self._lr,
                   "img_per_s": self._epoch_images / max(epoch_ms / MS_PER_S, 1e-9), "broken_images": broken_images}
        self.log(format_epoch_line(epoch_ms, summary["per_step_ms"], summary["avg_loss"], summary["img_per_s"],
                                   broken_images))
        self.record("epoch", **summary)
        if self.is_main:
            self._summary.update(summary["epoch"], train_loss=summary["avg_loss"], lr=self._lr,
                                 img_per_s=summary["img_per_s"], epoch_time_s=epoch_ms / MS_PER_S,
                                 broken_images=broken_images)
        return summary

    def log_val(self, epoch: int, top1: float, top5: float | None, loss: float | None = None,
                tag: str | None = None) -> None:
        """Validation after ``epoch`` (0-based index; logged and recorded 1-based like every epoch
        number a user sees); ``tag`` separates e.g. the EMA model ('ema')."""
        self.log(format_val_line(epoch + 1, self.epochs, top1, top5, loss, tag))
        self.record("val", epoch=epoch + 1, global_step=(epoch + 1) * self.steps_per_epoch, top1=top1, top5=top5,
                    loss=loss, tag=tag)
        if self.is_main:
            prefix = f"{tag}_val" if tag else "val"
            self._summary.update(epoch + 1, **{f"{prefix}_loss": loss, f"{prefix}_top1": top1, f"{prefix}_top5": top5})

    def close(self) -> Path | None:
        """Finish the bar, close the event file and draw curves.png from metrics.jsonl; returns the
        PNG's path (main only; None without matplotlib, with one note saying how to get it)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tensorboard is not None:
            self._tensorboard.close()  # flushes
            self._tensorboard = None
        metrics = self.run_dir / METRICS_FILE
        if not self.is_main or not metrics.is_file():
            return None
        png = save_curves_png(metrics, self.run_dir / CURVES_FILE)
        if png is None:
            self.log(MATPLOTLIB_NOTE)
        return png
