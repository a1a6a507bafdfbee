"""Tests for src/monitor.py and src/plot.py: exact line formats, train.log, metrics.jsonl, curves."""

import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from src.monitor import (BestTracker, EarlyStopping, TrainMonitor, format_epoch_line, format_lr,
                         format_step_line, format_val_line)
from src.plot import COLORS, PANEL_H, PANEL_W, nice_ticks, save_curves_png

STEP_RE = re.compile(r"^epoch: \[ *(\d+)/ *(\d+)\], step:\[ *(\d+)/ *(\d+)\], loss:\[(\d+\.\d{3})/(\d+\.\d{3})\], "
                     r"time:\[\d+\.\d\], lr:\[([0-9.e+-]+)\], img/s:\[\d+\.\d\], data:\[\d+%\]$")
EPOCH_RE = re.compile(r"^epoch time: \d+\.\d{3}, per step time: \d+\.\d{3}, avg loss: (\d+\.\d{3}), "
                      r"img/s: \d+\.\d(, broken images: (\d+))?$")


@pytest.mark.parametrize("lr, text", [(7e-06, "7.0e-06"), (0.052, "0.052000"), (0.13, "0.130000"),
                                      (1e-4, "1.0e-04"), (0.001, "0.001000"), (0.0, "0.000000")])
def test_format_lr(lr, text):
    assert format_lr(lr) == text


def test_exact_line_formats():
    assert format_step_line(0, 350, 100, 625, 2.345, 2.567, 1033.0, 0.052, 123.94, 0.123) == (
        "epoch: [  0/350], step:[  100/  625], loss:[2.345/2.567], time:[1033.0], lr:[0.052000], "
        "img/s:[123.9], data:[12%]")
    assert format_step_line(12, 350, 625, 625, 1.0, 1.5, 98.76, 7e-6, 1190.0, 0.0, mem_gb=3.214).endswith(
        "time:[98.8], lr:[7.0e-06], img/s:[1190.0], data:[0%], mem:[3.21GB]")
    assert format_epoch_line(645634.656, 1033.015, 4.786, 99.14) == (
        "epoch time: 645634.656, per step time: 1033.015, avg loss: 4.786, img/s: 99.1")
    assert format_epoch_line(1.0, 1.0, 1.0, 1.0, broken_images=3).endswith(", broken images: 3")
    assert format_val_line(4, 350, 0.798, 0.9469, loss=1.74951, tag="ema") == (
        "val(ema): epoch: [  4/350], top-1: 0.79800, top-5: 0.94690, loss: 1.7495")


def run_tiny_training(monitor: TrainMonitor) -> None:
    """2 epochs x 5 steps; epoch 0 passes floats, epoch 1 passes tensors (the no-sync path)."""
    for epoch in range(2):
        monitor.start_epoch(epoch)
        for step in range(5):
            loss = 4.0 - epoch - 0.5 * step
            lr = 7e-6 if step == 0 else 0.052
            monitor.update(torch.tensor(loss) if epoch else loss, lr=lr, images=8, data_time=0.0)
        monitor.end_epoch(broken_images=epoch * 2)
        monitor.log_val(epoch, top1=0.5 + 0.1 * epoch, top5=0.9, loss=1.25)
        monitor.log_val(epoch, top1=0.55 + 0.1 * epoch, top5=0.95, tag="ema")


def test_monitor_writes_log_and_metrics(tmp_path, capsys):
    monitor = TrainMonitor(tmp_path / "run", epochs=2, steps_per_epoch=5, log_interval=2, use_tqdm=False)
    run_tiny_training(monitor)
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert capsys.readouterr().out.splitlines() == lines
    steps = [STEP_RE.match(line).groups() for line in lines if line.startswith("epoch: ")]
    # Logged at steps 2, 4 and the last step 5 (epochs 1-based); loss = current/avg over the epoch so far.
    assert [(int(g[0]), int(g[2]), g[4], g[5], g[6]) for g in steps] == [
        (1, 2, "3.500", "3.750", "0.052000"), (1, 4, "2.500", "3.250", "0.052000"),
        (1, 5, "2.000", "3.000", "0.052000"), (2, 2, "2.500", "2.750", "0.052000"),
        (2, 4, "1.500", "2.250", "0.052000"), (2, 5, "1.000", "2.000", "0.052000")]
    epochs = [EPOCH_RE.match(line) for line in lines if line.startswith("epoch time")]
    assert [(m.group(1), m.group(3)) for m in epochs] == [("3.000", None), ("2.000", "2")]
    assert "val: epoch: [  2/  2], top-1: 0.60000, top-5: 0.90000, loss: 1.2500" in lines
    assert "val(ema): epoch: [  1/  2], top-1: 0.55000, top-5: 0.95000" in lines

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == (["step"] * 3 + ["epoch", "val", "val"]) * 2
    last_step = records[8]
    assert {k: last_step[k] for k in ("epoch", "step", "global_step", "epoch_progress", "loss", "avg_loss", "lr")} \
        == {"epoch": 2, "step": 5, "global_step": 10, "epoch_progress": 2.0, "loss": 1.0, "avg_loss": 2.0, "lr": 0.052}
    assert last_step["mem_gb"] is None and 0.0 <= last_step["data_share"] <= 1.0
    assert records[9]["avg_loss"] == 2.0 and records[9]["broken_images"] == 2
    assert records[11] == {"type": "val", "epoch": 2, "top1": 0.65, "top5": 0.95, "loss": None, "tag": "ema"}


def test_non_main_process_is_silent(tmp_path, capsys):
    monitor = TrainMonitor(tmp_path / "run", epochs=2, steps_per_epoch=5, log_interval=1, is_main=False)
    run_tiny_training(monitor)
    assert monitor.close() is None
    assert not (tmp_path / "run").exists()
    assert capsys.readouterr().out == ""


def test_tqdm_bar_keeps_lines_in_log(tmp_path, capsys):
    monitor = TrainMonitor(tmp_path, epochs=2, steps_per_epoch=5, log_interval=5, use_tqdm=True)
    run_tiny_training(monitor)
    captured = capsys.readouterr()
    assert "epoch 1/2" in captured.err  # the bar's description
    assert captured.out.splitlines() == (tmp_path / "train.log").read_text().splitlines()


def _has_color(image: Image.Image, color: tuple, panel: int, tolerance: int = 0) -> bool:
    """Some pixel of ``panel`` within ``tolerance`` (per channel) of ``color``."""
    pixels = np.asarray(image).astype(np.int16)[:, panel * PANEL_W:(panel + 1) * PANEL_W]
    return bool((np.abs(pixels - np.array(color, dtype=np.int16)) <= tolerance).all(axis=-1).any())


def _draw_with_monitor(tmp_path, matplotlib_installed: bool, monkeypatch) -> Image.Image:
    if not matplotlib_installed:
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails: the Pillow renderer
    monitor = TrainMonitor(tmp_path, epochs=2, steps_per_epoch=5, log_interval=1, use_tqdm=False)
    run_tiny_training(monitor)
    png = monitor.close()
    assert png == tmp_path / "curves.png"
    with Image.open(png) as image:
        assert (image.format, image.size) == ("PNG", (3 * PANEL_W, PANEL_H))
        return image.convert("RGB")


def test_close_draws_three_panel_png(tmp_path, monkeypatch):
    """Without matplotlib (forced, whether or not it is installed): Pillow draws the exact colours."""
    image = _draw_with_monitor(tmp_path, False, monkeypatch)
    assert [_has_color(image, COLORS[0], p) for p in range(3)] == [True, True, True]
    assert [_has_color(image, COLORS[1], p) for p in range(3)] == [False, True, False]  # only top-1 has 'ema'


def test_close_draws_three_panel_png_with_matplotlib(tmp_path, monkeypatch):
    """With matplotlib: same size and panels; its anti-aliased lines only come near the colours."""
    pytest.importorskip("matplotlib")
    image = _draw_with_monitor(tmp_path, True, monkeypatch)
    near = 40  # anti-aliasing blends a 1.5 px line with the white background
    assert [_has_color(image, COLORS[0], p, near) for p in range(3)] == [True, True, True]
    assert [_has_color(image, COLORS[1], p, near) for p in range(3)] == [False, True, False]


def test_save_curves_png_with_no_validation(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"type": "step", "epoch": 0, "step": 1, "epoch_progress": 0.5,
                                   "loss": 2.0, "lr": 0.1}) + "\n")
    out = save_curves_png(metrics, tmp_path / "c.png", backend="pillow")
    with Image.open(out) as image:
        assert image.size == (3 * PANEL_W, PANEL_H)
        assert not _has_color(image.convert("RGB"), COLORS[0], 1)


def test_nice_ticks():
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.5, 1.0])
    assert nice_ticks(-0.05, 0.42) == pytest.approx([0.0, 0.2, 0.4])
    assert nice_ticks(1e-6, 0.13) == pytest.approx([0.05, 0.1])


def test_early_stopping_counts():
    stopper = EarlyStopping(patience=2, mode="max")
    assert [stopper.step(v) for v in (0.5, 0.6, 0.6, 0.55)] == [False, False, False, True]
    assert (stopper.best, stopper.bad_epochs) == (0.6, 2)
    resumed = EarlyStopping(patience=2)
    resumed.load_state_dict(stopper.state_dict())
    assert (resumed.best, resumed.bad_epochs) == (0.6, 2)
    by_loss = EarlyStopping(patience=1, mode="min", min_delta=0.1)
    assert [by_loss.step(v) for v in (1.0, 0.95)] == [False, True]  # 0.05 better is not enough
    with pytest.raises(ValueError, match="patience must be >= 1"):
        EarlyStopping(patience=0)


def test_best_tracker():
    tracker = BestTracker(mode="max")
    assert [tracker.update(v) for v in (0.1, 0.3, 0.2, 0.3, 0.4)] == [True, True, False, False, True]
    assert tracker.best == 0.4
    assert BestTracker(mode="min", best=1.0).update(2.0) is False
    with pytest.raises(ValueError, match="mode must be"):
        BestTracker(mode="up")
