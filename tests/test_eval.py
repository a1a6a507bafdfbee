"""eval.py, src/evaluation/metrics.py and scripts/run_eval.sh: every image scored once, exact metrics, clear errors."""
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
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

import eval as eval_entry
from src.data.cifar import load_cifar_split
from src.data.dataset import ImageFolderDataset, collate_skip_broken
from src.data.transforms import to_device_normalized
from src.evaluation.metrics import EvalResult, evaluate, format_result_line, write_confusion_csv
from src.models import build_model, default_preprocess
from src.models.pretrained import pretrained_url
from src.common.preprocess import Preprocess, eval_image, list_class_folders, load_rgb, normalize_batch
from src.data.transforms import build_eval_transform
from tests.helpers_data import class_name, make_image_folder, shape_image, smooth_photo, write_broken_file
from tests.helpers_models import MIN_DISTINCT_CLASSES, calibrate, calibrated_model, photo_batch, spread_head

REPO = Path(__file__).resolve().parents[1]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_IMAGES = 103  # odd on purpose: 103 = 6 full batches of 16 + 7, and not divisible by 2 ranks
PER_CLASS = [15, 15, 15, 15, 15, 14, 14]  # 7 classes, so top-5 is a real top-5
CLASSES = [class_name(i) for i in range(len(PER_CLASS))]
TV_IMAGES = 24  # the torchvision model's 3-class set: 3 x 8
BATCH = 16
CROP = 32
B0_SMALL = Preprocess(37, CROP, "bicubic", IMAGENET_MEAN, IMAGENET_STD)  # B0's 256 -> 224 ratio at 32 px
FAST = ["--device_target", "CPU", "--num_workers", "0", "--batch_size", str(BATCH)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: with other test processes on the same cores, OpenMP workers that
    spin-wait for each other make tiny in-process evals many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spread_classifier(model: nn.Module, seed: int) -> nn.Module:
    """Large random classifier weights so a randomly initialised net predicts varied classes."""
    g = torch.Generator().manual_seed(seed)
    linear = model.classifier[1]
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 2.0)
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=g))
    return model.eval()


def _eval_batch(folder: Path, pre: Preprocess = B0_SMALL) -> torch.Tensor:
    """Every image under ``folder`` as eval.py feeds it (resize, centre crop, normalise), NCHW."""
    _, samples = list_class_folders(folder)
    images = np.stack([eval_image(load_rgb(path), pre) for path, _ in samples])
    return torch.from_numpy(normalize_batch(images, pre.mean, pre.std))


def _read_confusion(path: Path) -> np.ndarray:
    """eval.py's --confusion_csv as a matrix: rows true classes, columns predicted ones."""
    with open(path, newline="") as handle:
        return np.array([[int(v) for v in row[1:]] for row in list(csv.reader(handle))[1:]])


def _predicted_classes(confusion: np.ndarray) -> int:
    """How many classes the model answered at least once."""
    return int((confusion.sum(axis=0) > 0).sum())


def _train_checkpoint(model: nn.Module, ema: dict | None = None) -> dict:
    """The dict train.py writes (src/training/loop.py checkpoint_state), reduced to what eval.py reads."""
    return {"model": model.state_dict(), "epoch": 1, "step": 7, "config": {}, "model_name": "efficientnet_b0",
            "num_classes": len(CLASSES), "classes": list(CLASSES), "preprocess": B0_SMALL.to_dict(), "ema": ema}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A dataset root with val/ of 103 images in 7 classes and a train.py checkpoint of a 7-class B0;
    a 3-class folder of 24 images and a torchvision efficientnet_b0(num_classes=3) state_dict."""
    import torchvision

    tmp = tmp_path_factory.mktemp("eval")
    root = make_image_folder(tmp / "data", classes=len(CLASSES), per_class=min(PER_CLASS), size=(40, 34),
                             split="val")
    rng = np.random.default_rng(7)
    for k, count in enumerate(PER_CLASS):
        for j in range(min(PER_CLASS), count):
            shape_image(k, len(CLASSES), (36, 40), rng).save(root / "val" / CLASSES[k] / f"extra_{j}.jpg")
    root3 = make_image_folder(tmp / "data3", classes=3, per_class=TV_IMAGES // 3, size=(40, 34), seed=1)
    # Both networks are calibrated on the images they score (and real photos), so their answers
    # vary from image to image: equal counts then mean equal per-image predictions.
    ours = calibrated_model("efficientnet_b0", len(CLASSES), B0_SMALL, images=_eval_batch(root / "val"), seed=1)
    torch.save(_train_checkpoint(ours), tmp / "b0-1_7.pth")
    torch.manual_seed(0)
    scored = torch.cat([photo_batch(CROP, mean=B0_SMALL.mean, std=B0_SMALL.std), _eval_batch(root3)])
    tv = spread_head(calibrate(torchvision.models.efficientnet_b0(num_classes=3), scored, seed=2), scored)
    torch.save(tv.state_dict(), tmp / "tv_b0_3cls.pth")
    return {"tmp": tmp, "root": root, "root3": root3, "ckpt": tmp / "b0-1_7.pth", "tv": tmp / "tv_b0_3cls.pth"}


def _run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = eval_entry.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _result_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("result: ")]
    assert len(lines) == 1, stdout  # printed once, by rank 0 only
    return lines[0]


@pytest.fixture(scope="module")
def single_run(files, tmp_path_factory) -> dict:
    """One in-process eval of the train.py checkpoint: JSON, confusion CSV and stdout."""
    out_dir = tmp_path_factory.mktemp("single")
    argv = ["--checkpoint_path", files["ckpt"], "--dataset_path", files["root"], *FAST,
            "--output_json", out_dir / "m.json", "--confusion_csv", out_dir / "cm.csv"]
    buf = io.StringIO()  # capsys is function-scoped; this fixture is shared by several tests
    with contextlib.redirect_stdout(buf):
        code = eval_entry.main([str(a) for a in argv])
    assert code == 0, buf.getvalue()
    return {"json": json.loads((out_dir / "m.json").read_text()), "csv": out_dir / "cm.csv",
            "stdout": buf.getvalue()}


# ---------------------------------------------------------------- counting, alone and distributed
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_odd_sized_set_scores_every_image_once_alone_and_under_torchrun(files, single_run, tmp_path):
    alone = single_run["json"]
    assert alone["images"] == NUM_IMAGES and alone["unreadable_images"] == 0
    assert alone["top_k"] == 5
    assert 0 < alone["correct_top1"] < alone["correct_top5"] < NUM_IMAGES  # non-degenerate predictions
    assert alone["preprocess"] == B0_SMALL.to_dict()  # taken from the checkpoint
    confusion = _read_confusion(single_run["csv"])
    assert _predicted_classes(confusion) >= MIN_DISTINCT_CLASSES  # the model's answer depends on the image

    out_json, out_csv = tmp_path / "dist.json", tmp_path / "dist.csv"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(REPO / "eval.py"), "--checkpoint_path", str(files["ckpt"]),
           "--dataset_path", str(files["root"]), *FAST, "--output_json", str(out_json), "--confusion_csv", str(out_csv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dist = json.loads(out_json.read_text())
    assert dist["world_size"] == 2
    assert dist["images"] == NUM_IMAGES
    for key in ("correct_top1", "correct_top5", "per_class"):
        assert dist[key] == alone[key], key
    assert np.array_equal(_read_confusion(out_csv), confusion)  # every image answered alike
    assert dist["Top_1_Acc"] == alone["Top_1_Acc"] and dist["Top_5_Acc"] == alone["Top_5_Acc"]
    assert dist["Loss"] == pytest.approx(alone["Loss"], rel=1e-6)
    assert _result_line(proc.stdout) == _result_line(single_run["stdout"])


def test_per_class_numbers_add_up_and_confusion_csv(single_run):
    result = single_run["json"]
    rows = result["per_class"]
    assert [r["class"] for r in rows] == CLASSES
    assert [r["total"] for r in rows] == PER_CLASS
    assert sum(r["correct"] for r in rows) == result["correct_top1"]
    assert result["Top_1_Acc"] == result["correct_top1"] / NUM_IMAGES
    for r in rows:
        assert r["accuracy"] == r["correct"] / r["total"]
    acc = np.array([r["accuracy"] for r in rows])
    summary = result["per_class_summary"]
    assert summary["mean"] == pytest.approx(acc.mean()) and summary["std"] == pytest.approx(acc.std())
    assert (summary["min"], summary["max"]) == (acc.min(), acc.max())
    assert [w["accuracy"] for w in summary["worst"]] == sorted(acc)[:5]
    with open(single_run["csv"], newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["true\\predicted", *CLASSES]
    matrix = np.array([[int(v) for v in row[1:]] for row in table[1:]])
    assert [row[0] for row in table[1:]] == CLASSES
    assert matrix.sum(axis=1).tolist() == [r["total"] for r in rows]
    assert np.diag(matrix).tolist() == [r["correct"] for r in rows]
    assert "worst 5 classes: " in single_run["stdout"] and "images/s" in single_run["stdout"]


def test_class_names_that_are_not_utf8_round_trip_through_the_csv_and_json(tmp_path):
    """A class folder named b'b\\xff' arrives as os.fsdecode's surrogate; the files keep its bytes."""
    classes = ["a", os.fsdecode(b"b\xff")]
    result = EvalResult(loss_sum=1.0, correct1=3, correctk=4, count=4, confusion=np.array([[2, 0], [1, 1]]),
                        top_k=2, seconds=1.0)
    write_confusion_csv(result, classes, str(tmp_path / "cm.csv"))
    assert (tmp_path / "cm.csv").read_bytes() == b"true\\predicted,a,b\xff\r\na,2,0\r\nb\xff,1,1\r\n"
    text = json.dumps(result.to_dict(classes), indent=2)  # as eval.py writes --output_json
    (tmp_path / "m.json").write_text(text, encoding="utf-8")
    rows = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["per_class"]
    assert [os.fsencode(r["class"]) for r in rows] == [b"a", b"b\xff"]


# ---------------------------------------------------------------- metrics against numpy
def test_metrics_equal_a_numpy_hand_computation(tmp_path):
    num_classes, crop = 7, 8
    folder = make_image_folder(tmp_path / "d", classes=num_classes, per_class=3, size=(12, 10), fmt="PNG")
    write_broken_file(folder / class_name(0) / "broken.jpg")
    pre = Preprocess(10, crop, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    classes, samples = list_class_folders(folder)
    loader = DataLoader(ImageFolderDataset(samples, classes, build_eval_transform(pre)), batch_size=4,
                        collate_fn=collate_skip_broken)
    torch.manual_seed(3)
    linear = nn.Linear(3 * crop * crop, num_classes)
    model = nn.Sequential(nn.Flatten(), linear).train()
    with pytest.warns(UserWarning, match="broken.jpg"):
        result = evaluate(model, loader, "cpu", pre.mean, pre.std, num_classes)
    assert model.training  # mode restored for train.py's validation

    w, b = linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()
    losses, hit1, hit5 = [], 0, 0
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for path, label in samples:
        if path.endswith("broken.jpg"):
            continue
        x = (eval_image(load_rgb(path), pre) / 255.0 - np.array(pre.mean)) / np.array(pre.std)
        logits = w @ x.transpose(2, 0, 1).reshape(-1) + b
        losses.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[label])
        ranked = np.argsort(-logits)
        hit1 += int(ranked[0] == label)
        hit5 += int(label in ranked[:5])
        confusion[label, ranked[0]] += 1
    assert (result.count, result.broken, result.top_k) == (21, 1, 5)
    assert (result.correct1, result.correctk) == (hit1, hit5)
    assert 0 < hit1 < hit5 < 21
    assert result.loss == pytest.approx(np.mean(losses), rel=1e-5)
    assert np.array_equal(result.confusion, confusion)
    # a training criterion that returns the batch mean or per-sample losses gives the same sums
    for criterion in (nn.CrossEntropyLoss(), nn.CrossEntropyLoss(reduction="none")):
        with pytest.warns(UserWarning):
            again = evaluate(model, loader, "cpu", pre.mean, pre.std, num_classes, criterion=criterion)
        assert again.loss == pytest.approx(result.loss, rel=1e-6) and again.correct1 == hit1
    assert format_result_line(result, "x.pth") == (
        f"result: {{'Loss': {np.mean(losses):.4f}, 'Top_1_Acc': {hit1 / 21:.4f}, "
        f"'Top_5_Acc': {hit5 / 21:.4f}}} ckpt = x.pth")


# ---------------------------------------------------------------- torchvision weights
def _torchvision_confusion(files) -> np.ndarray:
    """The saved torchvision model's own confusion matrix on our eval preprocessing."""
    import torchvision

    tv = torchvision.models.efficientnet_b0(num_classes=3)
    tv.load_state_dict(torch.load(files["tv"], weights_only=True))
    tv.eval()
    classes, samples = list_class_folders(files["root3"])
    transform = build_eval_transform(B0_SMALL)
    images = torch.stack([transform(path) for path, _ in samples])
    with torch.no_grad():
        pred = tv(to_device_normalized(images, B0_SMALL.mean, B0_SMALL.std, "cpu")).argmax(1)
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, ([label for _, label in samples], pred.numpy()), 1)
    return confusion


def test_torchvision_state_dict_evaluates_through_run_eval_sh(files, tmp_path, capsys):
    out_json, out_csv = tmp_path / "tv.json", tmp_path / "tv.csv"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_eval.sh"), str(files["root3"]), str(files["tv"]),
                           "--model", "efficientnet_b0", "--crop", str(CROP), *FAST, "--output_json", str(out_json),
                           "--confusion_csv", str(out_csv)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out_json.read_text())
    confusion = _torchvision_confusion(files)
    expected = int(np.trace(confusion))
    assert _predicted_classes(confusion) == 3  # the calibrated model answers every class for some image
    assert result["images"] == TV_IMAGES and result["num_classes"] == 3
    assert result["Top_5_Acc"] is None and result["top_k_shown"] is False  # 3 classes: top-5 means nothing
    assert result["preprocess"] == B0_SMALL.to_dict()  # --crop 32 alone keeps B0's 256/224 ratio -> 37
    assert np.array_equal(_read_confusion(out_csv), confusion)  # image by image as torchvision answers
    assert result["correct_top1"] == expected
    assert f"ckpt = {files['tv']}" in _result_line(proc.stdout)

    # the same file through --pretrained PATH (src.models.load_pretrained) gives the same numbers
    code, out, err = _run_main(capsys, ["--model", "efficientnet_b0", "--pretrained", files["tv"], "--dataset_path",
                                        files["root3"], "--crop", CROP, *FAST, "--output_json", tmp_path / "p.json"])
    assert code == 0, err
    again = json.loads((tmp_path / "p.json").read_text())
    assert again["correct_top1"] == expected and again["Loss"] == pytest.approx(result["Loss"], rel=1e-6)


def test_config_file_supplies_settings_and_flags_win(files, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("model: efficientnet_b0\neval_crop: 40\ninterpolation: bilinear\nbatch_size: 16\n"
                      "num_workers: 0\ndevice_target: CPU\n")
    code, out, err = _run_main(capsys, ["--config", config, "--checkpoint_path", files["tv"], "--dataset_path",
                                        files["root3"], "--crop", CROP, "--output_json", tmp_path / "c.json"])
    assert code == 0, err
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["preprocess"] == {**B0_SMALL.to_dict(), "interpolation": "bilinear"}
    assert result["images"] == TV_IMAGES and "batch 16 x 1 process(es), device cpu" in out


def test_pretrained_imagenet_uses_torchvision_download(files, tmp_path, capsys, monkeypatch):
    torch.manual_seed(4)
    published = build_model("efficientnet_b0").state_dict()  # stands in for the 1000-class download
    asked = []

    def fake_download(url, **kwargs):
        asked.append((url, kwargs.get("weights_only")))
        return published

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    code, out, err = _run_main(capsys, ["--model", "efficientnet_b0", "--pretrained", "--dataset_path", files["root"],
                                        *FAST, "--crop", CROP, "--output_json", tmp_path / "i.json"])
    assert code == 0, err
    assert asked == [(pretrained_url("efficientnet_b0"), True)]  # one download, read weights-only
    assert "ckpt = torchvision efficientnet_b0 IMAGENET1K_V1" in _result_line(out)
    result = json.loads((tmp_path / "i.json").read_text())
    assert result["images"] == NUM_IMAGES and result["num_classes"] == 1000
    assert result["per_class_summary"]["classes_with_images"] == len(CLASSES)  # folders -> indices 0..6
    assert [r["class"] for r in result["per_class"][:8]] == [*CLASSES, "class_7"]


def test_folders_named_otherwise_score_by_sorted_order_only_when_all_classes_are_there(files, single_run, tmp_path,
                                                                                       capsys):
    """src.common.class_mapping's rule through eval.py: as many folders as the checkpoint has classes, none named
    like them (WordNet ids against category words): the sorted order, with a note; fewer: an error."""
    renamed = tmp_path / "renamed"
    shutil.copytree(files["root"] / "val", renamed)
    for i, name in enumerate(CLASSES):
        (renamed / name).rename(renamed / f"n{i:08d}")
    code, out, err = _run_main(capsys, ["--checkpoint_path", files["ckpt"], "--dataset_path", renamed, *FAST,
                                        "--output_json", tmp_path / "r.json"])
    assert code == 0, err
    assert out.splitlines()[0] == (f"note: no class folder of {renamed} is named like the checkpoint's classes (e.g. "
                                   "WordNet ids against category names); labels are the class folders' sorted order, "
                                   "as in training")
    result = json.loads((tmp_path / "r.json").read_text())
    assert [r["class"] for r in result["per_class"]] == CLASSES  # the checkpoint's names
    assert result["per_class"] == single_run["json"]["per_class"]
    shutil.rmtree(renamed / "n00000006")
    code, out, err = _run_main(capsys, ["--checkpoint_path", files["ckpt"], "--dataset_path", renamed, *FAST])
    assert (code, err) == (2, f"error: class folder 'n00000000' in {renamed} is not one of the checkpoint's 7 classes "
                              f"({', '.join(CLASSES[:5])}, ...); 6 class folders do not match\n")


def test_use_ema_evaluates_the_ema_weights(files, tmp_path, capsys):
    torch.manual_seed(5)
    model = _spread_classifier(build_model("efficientnet_b0", num_classes=len(CLASSES)), seed=6)
    torch.manual_seed(7)
    ema = _spread_classifier(build_model("efficientnet_b0", num_classes=len(CLASSES)), seed=8)
    both = tmp_path / "both.pth"
    torch.save(_train_checkpoint(model, ema=ema.state_dict()), both)
    only_ema = tmp_path / "ema_as_model.pth"
    torch.save(_train_checkpoint(ema), only_ema)
    runs = {}
    for name, argv in {"ema": ["--checkpoint_path", both, "--use_ema"], "default": ["--checkpoint_path", both],
                       "model": ["--checkpoint_path", both, "--use_ema", "false"],
                       "reference": ["--checkpoint_path", only_ema]}.items():
        code, out, err = _run_main(capsys, [*argv, "--dataset_path", files["root"], *FAST,
                                            "--output_json", tmp_path / f"{name}.json"])
        assert code == 0, err
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert runs["ema"]["per_class"] == runs["reference"]["per_class"]
    assert runs["ema"]["Loss"] == pytest.approx(runs["reference"]["Loss"], rel=1e-6)
    assert runs["ema"]["Loss"] != pytest.approx(runs["model"]["Loss"], rel=1e-3)
    # The default is the weights the checkpoint's best was chosen by: the EMA when there is one.
    assert runs["default"]["per_class"] == runs["ema"]["per_class"] and runs["default"]["use_ema"] is True
    assert runs["model"]["use_ema"] is False


# ---------------------------------------------------------------- eval.py vs the ONNX runner
def _classify_feature_deviations(model: nn.Module, x: torch.Tensor, seed: int) -> None:
    """A random classifier over the standardised pooled features of ``x``: random nets give every
    image nearly the same features, so a plain random head would answer one class for all."""
    with torch.no_grad():
        features = model.avgpool(model.features(x)).flatten(1)
        mean, std = features.mean(0), features.std(0) + 1e-6
        linear = model.classifier[1]
        weight = torch.randn(linear.weight.shape, generator=torch.Generator().manual_seed(seed)) / std
        linear.weight.copy_(weight)
        linear.bias.copy_(-weight @ mean)


def test_onnx_runner_scores_every_image_as_eval_py_does(files, single_run, tmp_path, capsys):
    """export.py + infer/ on the checkpoint eval.py scores: same top-1/top-5, same confusion matrix.

    The model is calibrated on these images (logits of a few units whose arg-max varies from image
    to image), so agreement cell by cell means the two share preprocessing to the pixel, not a
    constant guess. export.py's own check (float64 reference, synthetic photos) must pass.
    """
    import export as export_entry
    from infer.runner import run_inference

    assert export_entry.main(["--checkpoint_path", str(files["ckpt"]), "--file_name", str(tmp_path / "b0"),
                              "--no_op_counts"]) == 0
    assert "onnxruntime vs PyTorch float64 on 4 synthetic photos: max abs diff" in capsys.readouterr().out
    runner = run_inference(tmp_path / "b0.onnx", files["root"], device_target="CPU", batch_size=BATCH,
                           intra_op_threads=1, announce=lambda _: None)

    scored = single_run["json"]
    assert len(runner.files) == scored["images"] == NUM_IMAGES
    predicted = runner.logits.argmax(axis=1)
    assert len(set(predicted.tolist())) >= MIN_DISTINCT_CLASSES  # a varied classifier, not one constant answer
    assert 0 < scored["correct_top1"] < scored["correct_top5"] < NUM_IMAGES
    assert runner.top1 == scored["Top_1_Acc"] and runner.top5 == scored["Top_5_Acc"]
    confusion = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    np.add.at(confusion, (runner.labels, predicted), 1)
    assert np.array_equal(confusion, _read_confusion(single_run["csv"]))


def test_cifar_test_batch_is_scored_with_names_matched_to_the_checkpoint(tmp_path, capsys):
    """A CIFAR folder as train.py reads it: its 40-image test batch is scored; the checkpoint lists the
    classes in reverse, so labels must be matched by name, and top-1 equals a numpy computation."""
    from tests.test_dataset import write_fake_cifar10
    from tests.test_export import conditioned_model

    write_fake_cifar10(tmp_path / "cifar", per_batch=40)
    images, labels, names = load_cifar_split(tmp_path / "cifar", "cifar10", "test")
    pre = Preprocess(32, 32, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    model, _ = conditioned_model("efficientnet_b0", num_classes=10, size=32, seed=5, pre=pre)
    x = torch.from_numpy(normalize_batch(np.stack([eval_image(Image.fromarray(im), pre) for im in images]),
                                         pre.mean, pre.std))
    _classify_feature_deviations(model, x, seed=6)
    with torch.no_grad():
        predicted = model(x).argmax(1).numpy()
    reversed_names = names[::-1]
    expected = int((predicted == np.array([reversed_names.index(names[label]) for label in labels])).sum())
    ckpt = {**_train_checkpoint(model), "classes": reversed_names, "num_classes": 10, "preprocess": pre.to_dict()}
    torch.save(ckpt, tmp_path / "c.pth")
    code, out, err = _run_main(capsys, ["--checkpoint_path", tmp_path / "c.pth", "--dataset_path", tmp_path / "cifar",
                                        *FAST, "--output_json", tmp_path / "c.json"])
    assert code == 0, err
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["images"] == 40 and "40 images in 10 cifar10 classes" in out and "cifar10 test batch" in out
    assert len(set(predicted.tolist())) >= 3 and 0 < expected < 40
    assert result["correct_top1"] == expected
    assert [r["class"] for r in result["per_class"]] == reversed_names


def test_cifar_choice_check_mode_and_broken_files(files, tmp_path, capsys):
    """A root with CIFAR files and class folders needs --dataset; --check reads CIFAR; bad CIFAR
    files give one error line."""
    import pickle

    from tests.test_dataset import write_fake_cifar10

    both = make_image_folder(tmp_path / "both", classes=2, per_class=2, size=(36, 36), split="val")
    write_fake_cifar10(both, per_batch=5)
    model = _spread_classifier(build_model("efficientnet_b0", num_classes=10), seed=3)
    torch.save({**_train_checkpoint(model), "classes": None, "num_classes": 10}, tmp_path / "c10.pth")
    common = ["--checkpoint_path", tmp_path / "c10.pth", "--dataset_path", both, *FAST]

    code, _, err = _run_main(capsys, common + ["--check"])
    assert code == 2 and "holds both cifar10 files and train/ or val/ class folders" in err
    assert "--dataset cifar10 or --dataset folder" in err and err.count("\n") == 1
    code, out, err = _run_main(capsys, common + ["--check", "--dataset", "cifar10"])
    assert code == 0 and "5 images in 10 cifar10 classes of" in out, err
    code, out, err = _run_main(capsys, common + ["--check", "--dataset", "folder"])
    assert code == 0 and "4 images in 2 class folders of" in out, err

    test_batch = both / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(test_batch.read_bytes())
    for broken, message in (({**batch, "labels": batch["labels"][:3]}, "has 5 images but 3 labels"),
                            ({**batch, "data": batch["data"][:, :100]}, "expected 'data' of shape (N, 3072)")):
        test_batch.write_bytes(pickle.dumps(broken, 2))
        code, _, err = _run_main(capsys, common + ["--check", "--dataset", "cifar10"])
        assert code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1, err


# ---------------------------------------------------------------- preprocessing vs torchvision
def test_eval_pipeline_matches_torchvision_preset_for_b0_and_b3(tmp_path):
    """Variant metadata -> dataset transform -> device normalisation equals the eval transform
    torchvision publishes with the weights (``Weights.transforms()``, offline, public API).

    (tests/test_preprocess.py checks eval_image + numpy normalisation; this checks the torch path
    eval.py uses and the resize/crop/interpolation stored for each variant.)"""
    from torchvision.models import get_model_weights

    paths = []
    for i, size in enumerate([(500, 375), (301, 420)]):
        paths.append(tmp_path / f"photo{i}.jpg")
        smooth_photo(size, seed=i).save(paths[-1], quality=90)
    for name in ("efficientnet_b0", "efficientnet_b3"):
        pre = default_preprocess(name)
        reference = get_model_weights(name)["IMAGENET1K_V1"].transforms()
        transform = build_eval_transform(pre)
        for path in paths:
            ours = to_device_normalized(transform(path)[None], pre.mean, pre.std, "cpu")[0]
            theirs = reference(load_rgb(path))
            assert ours.shape == theirs.shape == (3, pre.crop, pre.crop)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bad_inputs(files, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "empty").mkdir()
    make_image_folder(tmp / "zebra", classes=1, per_class=2, size=(36, 36))
    (tmp / "zebra" / class_name(0)).rename(tmp / "zebra" / "zebra")
    make_image_folder(tmp / "four", classes=4, per_class=1, size=(36, 36))
    for i in range(2):
        write_broken_file(tmp / "broken" / class_name(0) / f"bad{i}.jpg")
    (tmp / "corrupt.pth").write_bytes(b"not a checkpoint at all")
    (tmp / "class_num.yaml").write_text("class_num: 10\n")
    (tmp / "a_file").touch()
    return {**files, "tmp": tmp}


BAD_CASES = {
    "other model": (["--checkpoint_path", "{tv}", "--model", "efficientnet_b3"], "does not fit efficientnet_b3"),
    "model flag vs checkpoint": (["--checkpoint_path", "{ckpt}", "--model", "efficientnet_b1"],
                                 "holds efficientnet_b0 weights"),
    "missing checkpoint": (["--checkpoint_path", "{tmp}/nope.pth"], "checkpoint not found"),
    "corrupt checkpoint": (["--checkpoint_path", "{tmp}/corrupt.pth"], "corrupt.pth"),
    "missing dataset": (["--checkpoint_path", "{ckpt}", "--dataset_path", "{tmp}/nothing"], "does not exist"),
    "empty dataset": (["--checkpoint_path", "{ckpt}", "--dataset_path", "{tmp}/empty"], "no class folders"),
    "unknown class folder": (["--checkpoint_path", "{ckpt}", "--dataset_path", "{tmp}/zebra"],
                             "class folder 'zebra'"),
    "more folders than classes": (["--checkpoint_path", "{tv}", "--model", "efficientnet_b0",
                                   "--dataset_path", "{tmp}/four"], "4 class folders but the model has only 3"),
    "unknown model": (["--checkpoint_path", "{tv}", "--model", "efficientnet_b9"], "unknown model 'efficientnet_b9'"),
    "state_dict without --model": (["--checkpoint_path", "{tv}"], "pass --model NAME"),
    "no ema": (["--checkpoint_path", "{ckpt}", "--use_ema"], "no EMA weights"),
    "pretrained without model": (["--pretrained"], "--pretrained imagenet needs the variant: pass --model NAME"),
    "config class_num": (["--checkpoint_path", "{ckpt}", "--config", "{tmp}/class_num.yaml"], "class_num is 10"),
    "unknown flag": (["--checkpoint_path", "{ckpt}", "--bogus", "1"], "unrecognized arguments: --bogus 1 (see python eval.py --help)"),
    "zero crop": (["--checkpoint_path", "{ckpt}", "--crop", "0"], "--crop must be a number of pixels from 1 to 8192, got 0"),
    "all images unreadable": (["--checkpoint_path", "{ckpt}", "--dataset_path", "{tmp}/broken"],
                              "none of the 2 images"),
    "output file behind a file": (["--checkpoint_path", "{ckpt}", "--output_json", "{tmp}/a_file/m.json"],
                                  "--output_json {tmp}/a_file/m.json: cannot write there (a file is in the way)"),
    "output file is a folder": (["--checkpoint_path", "{ckpt}", "--confusion_csv", "{tmp}/empty"],
                                "--confusion_csv {tmp}/empty is a folder"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # the unreadable-image case warns per file
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_gives_one_error_line_and_exit_2(bad_inputs, capsys, case):
    argv, expected = BAD_CASES[case]
    argv = [a.format(**bad_inputs) for a in argv]
    if "--dataset_path" not in argv:
        argv += ["--dataset_path", str(bad_inputs["root"])]
    code, out, err = _run_main(capsys, [*argv, *FAST])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected.format(**bad_inputs) in lines[0]
    assert "result:" not in out


def test_bad_input_in_a_real_process_and_under_device_num_has_no_traceback(files):
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE_NUM": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_eval.sh"), str(files["root"]), str(files["tv"]),
                           "--model", "efficientnet_b3", *FAST], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: ") and "does not fit efficientnet_b3" in proc.stderr


def test_unreadable_images_are_one_warning_line_each_in_a_real_process(bad_inputs):
    proc = subprocess.run([sys.executable, "eval.py", "--checkpoint_path", str(bad_inputs["ckpt"]), "--dataset_path",
                           str(bad_inputs["tmp"] / "broken"), *FAST], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    broken = bad_inputs["tmp"] / "broken" / class_name(0)
    assert proc.returncode == 2
    skipped = [f"warning: skipping unreadable image {broken / name}: UnidentifiedImageError: cannot identify "
               f"image file '{broken / name}'" for name in ("bad0.jpg", "bad1.jpg")]
    assert proc.stderr.splitlines() == [
        *skipped, "error: none of the 2 images in " + str(bad_inputs["tmp"] / "broken") + " could be read"]


# ---------------------------------------------------------------- run_eval.sh arguments
@pytest.mark.parametrize("args,env,expected", [
    ([], {}, "expected DATA_DIR and CHECKPOINT_PATH, got 0"),
    (["{root}"], {}, "got 1 argument"),
    (["{tmp}/no_such_dir", "{ckpt}"], {}, "is not a directory"),
    (["{root}", "{tmp}/no_such.pth"], {}, "is not a file"),
    (["{root}", "{ckpt}"], {"DEVICE_NUM": "two"}, "DEVICE_NUM must be a positive integer"),
])
def test_run_eval_sh_checks_arguments(files, args, env, expected):
    argv = [a.format(**files) for a in args]
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_eval.sh"), *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": "false", **env}, timeout=60)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Usage: bash scripts/run_eval.sh [DATA_DIR] [CHECKPOINT_PATH]" in proc.stderr
