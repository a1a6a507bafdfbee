"""eval.py --report DIR: eval.json, confusion.csv, mistakes.csv and three pictures, drawn from the numbers.

What is checked is the data handed to the plotter (src.evaluation.pictures), never pixels: the
confusion matrix and the per-class bars are eval.json's and confusion.csv's counts, and the mistakes
are exactly the misclassified images with the highest confidence, computed here independently, with
their paths; under two gloo processes the same pictures come from every image once.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_entry
from src.common.preprocess import Preprocess, eval_image, list_class_folders, load_rgb, normalize_batch
from src.evaluation import mistakes as mistakes_module
from src.evaluation import pictures
from src.evaluation.metrics import EvalResult
from src.evaluation.mistakes import MistakeRecorder
from tests.helpers_models import FLOWERS_DIR, calibrated_model

REPO = Path(__file__).resolve().parents[1]
CROP = 32
PRE = Preprocess(37, CROP, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FAST = ["--device_target", "CPU", "--num_workers", "0", "--batch_size", "5", "--channels_last", "false"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# float32 logits of one image move with the batch it is in (other batch sizes, another rank's share): measured up
# to 1.7e-5 in a probability under torchrun here; which images are wrong, and their order, do not move.
PROBABILITY_TOLERANCE = 1e-4


def _scored(folder: Path) -> tuple[list[str], list[str], torch.Tensor, torch.Tensor]:
    """(classes, paths, labels, inputs) of every image of ``folder`` as eval.py feeds them."""
    classes, samples = list_class_folders(folder)
    pixels = np.stack([eval_image(load_rgb(path), PRE) for path, _ in samples])
    x = torch.from_numpy(normalize_batch(pixels, PRE.mean, PRE.std))
    return classes, [str(path) for path, _ in samples], torch.tensor([label for _, label in samples]), x


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The 24 committed flower photos (6 classes) and a train.py checkpoint of a 6-class B0 whose answers
    vary with the photo (calibrated on them), with the misclassified images it gives, most confident first."""
    tmp = tmp_path_factory.mktemp("pictures")
    shutil.copytree(FLOWERS_DIR, tmp / "flowers")
    classes, paths, labels, x = _scored(tmp / "flowers")
    model = calibrated_model("efficientnet_b0", len(classes), PRE, images=x, seed=3)
    torch.save({"model": model.state_dict(), "epoch": 1, "step": 1, "config": {}, "model_name": "efficientnet_b0",
                "classes": classes, "preprocess": PRE.to_dict()}, tmp / "b0.pth")
    with torch.no_grad():
        probability, predicted = model.eval()(x).softmax(1).max(1)
    wrong = [(paths[i], int(labels[i]), int(predicted[i]), float(probability[i]))
             for i in range(len(paths)) if predicted[i] != labels[i]]
    wrong.sort(key=lambda m: (-m[3], m[0]))
    assert 5 < len(wrong) < len(paths) - 3  # mistakes to rank, and right answers too
    return {"tmp": tmp, "data": tmp / "flowers", "ckpt": tmp / "b0.pth", "classes": classes, "wrong": wrong}


def _eval(setup: dict, report: Path, *extra: str) -> str:
    argv = ["--checkpoint_path", setup["ckpt"], "--dataset_path", setup["data"], *FAST, "--report", report, *extra]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert eval_entry.main([str(a) for a in argv]) == 0
    return out.getvalue()


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _mistake_rows(path: Path) -> list[tuple[str, str, str, float]]:
    return [(row[1], row[2], row[3], float(row[4])) for row in _csv(path)[1:]]


def _expected_rows(setup: dict, count: int | None = None) -> list[tuple[str, str, str, float]]:
    names = setup["classes"]
    return [(path, names[true], names[pred], p) for path, true, pred, p in setup["wrong"][:count]]


def _assert_same_mistakes(got: list[tuple[str, str, str, float]], expected: list[tuple[str, str, str, float]]) -> None:
    assert [row[:3] for row in got] == [row[:3] for row in expected]
    diff = np.abs(np.subtract([row[3] for row in got], [row[3] for row in expected]))
    assert diff.max() <= PROBABILITY_TOLERANCE, diff


@pytest.fixture(scope="module")
def single(setup, tmp_path_factory) -> dict:
    """One in-process eval.py --report, with what was handed to the three plotters."""
    handed: dict[str, object] = {}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("draw_confusion", "draw_per_class", "draw_mistakes"):
            original = getattr(pictures, name)

            def capture(*args, _name=name, _original=original):
                handed[_name] = args[:-1]
                return _original(*args)

            mp.setattr(pictures, name, capture)
        report = tmp_path_factory.mktemp("single") / "report"
        stdout = _eval(setup, report)
    return {"report": report, "handed": handed, "stdout": stdout, "json": json.loads((report / "eval.json").read_text())}


def test_confusion_and_per_class_pictures_are_drawn_from_eval_jsons_counts(single, setup):
    report, metrics = single["report"], single["json"]
    (view,) = single["handed"]["draw_confusion"]
    table = _csv(report / "confusion.csv")
    assert view.names == table[0][1:] == setup["classes"] and view.indices == list(range(6))
    assert view.counts.tolist() == [[int(v) for v in row[1:]] for row in table[1:]]
    assert view.totals.tolist() == [r["total"] for r in metrics["per_class"]] == [4] * 6
    assert np.trace(view.counts) == metrics["correct_top1"] and view.counts.sum() == metrics["images"] == 24
    assert np.allclose(view.rates.sum(1), 1.0)  # row-normalised
    (bars,) = single["handed"]["draw_per_class"]
    rows = sorted(metrics["per_class"], key=lambda r: -r["accuracy"])  # best first, ties in class order
    assert bars.names == [r["class"] for r in rows] and bars.accuracy.tolist() == [r["accuracy"] for r in rows]
    assert (bars.correct, bars.total) == ([r["correct"] for r in rows], [r["total"] for r in rows])
    assert bars.mean == metrics["per_class_summary"]["mean"]
    assert bars.worst == [r["class"] for r in metrics["per_class_summary"]["worst"]]
    for name in pictures.PICTURES:
        assert (report / name).read_bytes()[:8] == PNG_SIGNATURE
    assert "report written to" in single["stdout"] and "mistakes.png" in single["stdout"]


def test_the_mistakes_are_the_most_confident_misclassified_images_with_their_paths(single, setup, tmp_path,
                                                                                     monkeypatch):
    _assert_same_mistakes(_mistake_rows(single["report"] / "mistakes.csv"), _expected_rows(setup))  # all of them
    shown, names = single["handed"]["draw_mistakes"]
    assert [(m.path, m.true, m.predicted) for m in shown] == [w[:3] for w in setup["wrong"][:pictures.MISTAKES_SHOWN]]
    assert all(m.thumbnail.shape == (CROP, CROP, 3) and m.thumbnail.dtype == np.uint8 for m in shown)
    assert names == setup["classes"]
    monkeypatch.setattr(mistakes_module, "MISTAKES_KEPT", 4)  # fewer kept than there are mistakes
    _eval(setup, tmp_path / "four", "--batch_size", "3")
    _assert_same_mistakes(_mistake_rows(tmp_path / "four" / "mistakes.csv"), _expected_rows(setup, 4))


def test_without_matplotlib_one_note_and_no_pictures(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    stdout = _eval(setup, tmp_path / "report")
    assert stdout.count(pictures.MATPLOTLIB_NOTE) == 1
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["confusion.csv", "eval.json", "mistakes.csv"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_under_two_gloo_processes_the_pictures_come_from_every_image_once(single, setup, tmp_path):
    report = tmp_path / "report"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(REPO / "eval.py"), "--checkpoint_path", str(setup["ckpt"]),
           "--dataset_path", str(setup["data"]), *FAST, "--report", str(report)]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("report written to") == 1  # rank 0 alone writes and draws
    metrics = json.loads((report / "eval.json").read_text())
    assert metrics["world_size"] == 2 and metrics["images"] == 24
    assert _csv(report / "confusion.csv") == _csv(single["report"] / "confusion.csv")  # the reduced counts
    rows = _mistake_rows(report / "mistakes.csv")
    assert len(rows) == len({row[0] for row in rows}) == metrics["images"] - metrics["correct_top1"]  # each once
    _assert_same_mistakes(rows, _expected_rows(setup))  # gathered from both ranks, ranked as by one
    for name in pictures.PICTURES:
        assert (report / name).read_bytes()[:8] == PNG_SIGNATURE


def test_many_classes_draw_the_30_most_confused_in_class_order():
    confusion = np.diag(np.full(40, 50)).astype(np.int64)
    for k in range(0, 40, 2):  # classes k and k + 1 swap k images: classes 10..39 are the 30 most confused
        confusion[k, k + 1] = confusion[k + 1, k] = k
    confusion[0, 39] = 1  # one error for class 0, one for class 39: still not enough for class 0
    result = EvalResult(0.0, int(np.trace(confusion)), 0, int(confusion.sum()), confusion, 5, 1.0)
    names = [f"c{k}" for k in range(40)]
    view = pictures.confusion_view(result, names)
    assert view.indices == list(range(10, 40)) and view.names == names[10:] and view.classes == 40
    assert view.totals.tolist() == confusion.sum(1)[10:].tolist()  # whole rows, not only the drawn columns
    assert view.counts[0, 1] == view.counts[1, 0] == 10 and view.counts.shape == (30, 30)


def test_data_without_paths_reports_no_mistakes():
    recorder = MistakeRecorder(limit=3)
    logits = torch.tensor([[0.0, 5.0], [5.0, 0.0]])
    recorder.add(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), logits, torch.tensor([0, 0]), ["a.jpg", "b.jpg"])
    assert [(m.path, m.true, m.predicted) for m in recorder.mistakes] == [("a.jpg", 0, 1)]
    recorder.add(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), logits[:1], torch.tensor([0]), None)  # a shard batch
    assert not recorder.available
