"""Tests for src/training/monitor.py, src/training/plot.py and src/training/scalar_logs.py: exact line formats, train.log,
metrics.jsonl, summary.csv, TensorBoard event files, curves.png, and what a resume leaves."""

import csv
import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from src.training.monitor import TrainMonitor, format_epoch_line, format_lr, format_step_line, format_val_line
from src.training.plot import COLORS, PANEL_H, PANEL_W, read_curves, save_curves_png

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


def run_tiny_training(monitor: TrainMonitor, epochs: range = range(2), first_step: int = 0,
                      shift: float = 0.0) -> None:
    """Epochs x 5 steps; even epochs pass floats, odd ones tensors (the no-sync path). ``first_step``
    starts the first epoch mid-way (a resume); ``shift`` tells a resumed run's numbers apart."""
    for epoch in epochs:
        monitor.start_epoch(epoch, first_step if epoch == epochs[0] else 0)
        for step in range(first_step if epoch == epochs[0] else 0, 5):
            loss = 4.0 - epoch - 0.5 * step + shift
            lr = 7e-6 if step == 0 else 0.052
            monitor.update(torch.tensor(loss) if epoch % 2 else loss, lr=lr, images=8, data_time=0.0)
        monitor.end_epoch(broken_images=epoch * 2)
        monitor.log_val(epoch, top1=0.5 + 0.1 * epoch + shift, top5=0.9, loss=1.25)
        monitor.log_val(epoch, top1=0.55 + 0.1 * epoch + shift, top5=0.95, tag="ema")


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
    assert {k: records[9][k] for k in ("epoch", "global_step", "avg_loss", "lr", "broken_images")} == {
        "epoch": 2, "global_step": 10, "avg_loss": 2.0, "lr": 0.052, "broken_images": 2}
    assert records[11] == {"type": "val", "epoch": 2, "global_step": 10, "top1": 0.65, "top5": 0.95, "loss": None,
                           "tag": "ema"}


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


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _note_lines(run_dir, capsys, words: str) -> list[str]:
    """Lines naming ``words`` in train.log, after checking stdout printed the same lines."""
    lines = (run_dir / "train.log").read_text().splitlines()
    assert capsys.readouterr().out.splitlines() == lines
    return [line for line in lines if words in line]


def _summary_rows(run_dir) -> list[dict]:
    with open(run_dir / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir))
    events.Reload()  # purge_orphaned_data (the default) applies a resumed writer's purge_step
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _f32(value: float) -> float:
    """TensorBoard keeps scalars as float32: the exact value it gives back."""
    return float(np.float32(value))


def test_tensorboard_events_equal_metrics(tmp_path):
    monitor = TrainMonitor(tmp_path, epochs=2, steps_per_epoch=5, log_interval=2, use_tqdm=False)
    run_tiny_training(monitor)
    monitor.close()
    records, scalars = _records(tmp_path), _tensorboard_scalars(tmp_path)
    steps, epochs = [r for r in records if r["type"] == "step"], [r for r in records if r["type"] == "epoch"]
    val = {tag: [r for r in records if r["type"] == "val" and r["tag"] == tag] for tag in (None, "ema")}
    assert set(scalars) == {"train/loss", "train/avg_loss", "train/lr", "train/ms_per_step", "train/img_per_s",
                            "train/data_share", "epoch/epoch_time_ms", "epoch/per_step_ms", "epoch/avg_loss",
                            "epoch/lr", "epoch/img_per_s", "epoch/broken_images", "val/top1", "val/top5", "val/loss",
                            "val_ema/top1", "val_ema/top5"}  # no mem_gb on CPU, no loss for the EMA
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 5, 7, 9, 10]  # global steps, as logged
    for name in ("loss", "avg_loss", "lr", "img_per_s", "data_share", "ms_per_step"):
        assert scalars[f"train/{name}"] == [(r["global_step"], _f32(r[name])) for r in steps], name
    for name in ("avg_loss", "lr", "img_per_s", "epoch_time_ms", "broken_images"):
        assert scalars[f"epoch/{name}"] == [(r["global_step"], _f32(r[name])) for r in epochs], name
    assert scalars["val/top1"] == [(5, _f32(0.5)), (10, _f32(0.6))]
    for section, tag in (("val", None), ("val_ema", "ema")):
        for name in ("top1", "top5"):
            assert scalars[f"{section}/{name}"] == [(r["global_step"], _f32(r[name])) for r in val[tag]]
    assert scalars["val/loss"] == [(5, 1.25), (10, 1.25)]


def test_summary_csv_rows_equal_metrics(tmp_path):
    monitor = TrainMonitor(tmp_path, epochs=2, steps_per_epoch=5, log_interval=2, use_tqdm=False)
    run_tiny_training(monitor)
    monitor.close()
    with open(tmp_path / "summary.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "img_per_s",
                                 "epoch_time_s", "broken_images", "ema_val_loss", "ema_val_top1", "ema_val_top5"]
    records = _records(tmp_path)
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [row["epoch"] for row in rows] == ["1", "2"]
    for row, rec in zip(rows, epochs):
        assert (float(row["train_loss"]), float(row["lr"]), float(row["img_per_s"]), int(row["broken_images"])) == (
            rec["avg_loss"], rec["lr"], rec["img_per_s"], rec["broken_images"])
        assert float(row["epoch_time_s"]) == rec["epoch_time_ms"] / 1000
    assert [(row["val_loss"], row["val_top1"], row["val_top5"]) for row in rows] == [
        ("1.25", "0.5", "0.9"), ("1.25", "0.6", "0.9")]
    assert [(row["ema_val_loss"], row["ema_val_top1"]) for row in rows] == [("", "0.55"), ("", "0.65")]


def test_resume_mid_epoch_keeps_one_row_and_one_event_per_step(tmp_path, capsys):
    """A run dies during epoch 3 after a checkpoint at epoch 2, step 2 (global step 7); the resumed run
    redoes steps 8.. with other numbers: only its numbers remain after step 7, each epoch once."""
    first = TrainMonitor(tmp_path, epochs=3, steps_per_epoch=5, log_interval=1, use_tqdm=False)
    run_tiny_training(first, range(2))
    first.start_epoch(2)
    first.update(9.0, lr=0.052, images=8)  # the interrupted run's last step: no end_epoch, no close
    first._tensorboard.flush()
    resumed = TrainMonitor(tmp_path, epochs=3, steps_per_epoch=5, log_interval=1, use_tqdm=False)
    resumed.resume_from(epochs_done=1, global_step=7)
    assert [row["epoch"] for row in _summary_rows(tmp_path)] == ["1"]  # epoch 2's row is trained again
    run_tiny_training(resumed, range(1, 3), first_step=2, shift=0.125)
    resumed.close()

    rows = _summary_rows(tmp_path)
    assert [(row["epoch"], row["val_top1"]) for row in rows] == [("1", "0.5"), ("2", "0.725"), ("3", "0.825")]
    # Epoch 2's average covers the 3 steps run after the resume: losses 2.125, 1.625, 1.125.
    assert [float(row["train_loss"]) for row in rows] == [3.0, 1.625, 1.125]
    scalars = _tensorboard_scalars(tmp_path)
    assert scalars["train/loss"] == [(1, 4.0), (2, 3.5), (3, 3.0), (4, 2.5), (5, 2.0), (6, 3.0), (7, 2.5),
                                     (8, 2.125), (9, 1.625), (10, 1.125),
                                     (11, 2.125), (12, 1.625), (13, 1.125), (14, 0.625), (15, 0.125)]
    assert scalars["val/top1"] == [(5, _f32(0.5)), (10, _f32(0.725)), (15, _f32(0.825))]
    assert [s for s, _ in scalars["epoch/avg_loss"]] == [5, 10, 15]
    _, top1, _ = read_curves(tmp_path / "metrics.jsonl")  # curves.png honours the resume record too
    assert [(label, xs, ys) for label, xs, ys in top1[1]] == [("model", [1, 2, 3], [0.5, 0.725, 0.825]),
                                                             ("ema", [1, 2, 3], [0.55, 0.775, 0.875])]
    assert [r["global_step"] for r in _records(tmp_path) if r["type"] == "resume"] == [7]


def test_tensorboard_missing_one_note_and_training_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails, installed or not
    monitor = TrainMonitor(tmp_path, epochs=2, steps_per_epoch=5, log_interval=1, use_tqdm=False)
    run_tiny_training(monitor)
    assert monitor.close() == tmp_path / "curves.png"
    assert list(tmp_path.glob("events.out.tfevents*")) == []
    assert _note_lines(tmp_path, capsys, "tensorboard") == [
        "note: no TensorBoard event files: tensorboard is not installed (pip install tensorboard)"]
    assert sum(r["type"] == "epoch" for r in _records(tmp_path)) == 2
    assert (tmp_path / "summary.csv").read_text().count("\n") == 3  # header + 2 epochs


def _has_color(image: Image.Image, color: str, panel: int, tolerance: int) -> bool:
    """Some pixel of ``panel`` within ``tolerance`` (per channel) of ``color`` ('#rrggbb')."""
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    pixels = np.asarray(image).astype(np.int16)[:, panel * PANEL_W:(panel + 1) * PANEL_W]
    return bool((np.abs(pixels - rgb) <= tolerance).all(axis=-1).any())


def test_close_draws_three_panel_png_with_matplotlib(tmp_path, capsys):
    monitor = TrainMonitor(tmp_path, epochs=2, steps_per_epoch=5, log_interval=1, use_tqdm=False)
    run_tiny_training(monitor)
    assert monitor.close() == tmp_path / "curves.png"
    assert _note_lines(tmp_path, capsys, "matplotlib") == []
    with Image.open(tmp_path / "curves.png") as image:
        assert (image.format, image.size) == ("PNG", (3 * PANEL_W, PANEL_H))
        image = image.convert("RGB")
    near = 40  # anti-aliasing blends a 1.5 px line with the white background
    assert [_has_color(image, COLORS[0], p, near) for p in range(3)] == [True, True, True]
    assert [_has_color(image, COLORS[1], p, near) for p in range(3)] == [False, True, False]  # only top-1 has 'ema'


def test_close_without_matplotlib_draws_nothing_and_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails, installed or not
    monitor = TrainMonitor(tmp_path, epochs=2, steps_per_epoch=5, log_interval=1, use_tqdm=False)
    run_tiny_training(monitor)
    assert monitor.close() is None
    assert not (tmp_path / "curves.png").exists()
    assert _note_lines(tmp_path, capsys, "matplotlib") == [
        "note: no curves.png: matplotlib is not installed (pip install matplotlib gives the PNG)"]


def test_save_curves_png_with_no_validation(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"type": "step", "epoch": 0, "step": 1, "global_step": 1, "epoch_progress": 0.5,
                                   "loss": 2.0, "lr": 0.1}) + "\n")
    out = save_curves_png(metrics, tmp_path / "c.png")
    with Image.open(out) as image:
        assert image.size == (3 * PANEL_W, PANEL_H)
        image = image.convert("RGB")
    assert [_has_color(image, COLORS[0], p, 40) for p in range(3)] == [True, False, True]


def test_top_k_is_shown_only_for_more_classes_than_k():
    """Top-5 of 5 classes or fewer is 100% by construction: the logs, eval.py and the runner leave it out."""
    from src.common.topk import NOT_SHOWN, shows_top_k
    from src.evaluation.metrics import EvalResult, format_result_line, format_summary

    assert [shows_top_k(n) for n in (2, 5, 6, 1000)] == [False, False, True, True]
    assert format_val_line(3, 30, 0.5, None) == "val: epoch: [  3/ 30], top-1: 0.50000"
    assert format_val_line(3, 30, 0.5, 0.75, 1.25) == "val: epoch: [  3/ 30], top-1: 0.50000, top-5: 0.75000, loss: 1.2500"

    def result(classes: int) -> EvalResult:
        return EvalResult(loss_sum=2.0, correct1=1, correctk=2, count=2, confusion=np.eye(classes, dtype=np.int64)[:classes],
                          top_k=min(5, classes), seconds=1.0)

    few, many = result(3), result(6)
    assert few.top5 is None and many.top5 == 1.0
    assert format_result_line(few, "c.pth").endswith("'Top_5_Acc': None} ckpt = c.pth")
    assert NOT_SHOWN in format_summary(few, ["a", "b", "c"]) and "top-5: 100.000% (2/2)" in format_summary(
        many, list("abcdef"))
    assert few.to_dict(["a", "b", "c"])["Top_5_Acc"] is None and many.to_dict(list("abcdef"))["Top_5_Acc"] == 1.0
