"""infer/ (the onnxruntime runner) and scripts/run_infer_onnx.sh: same logits as PyTorch on the
same images, ModelZoo accuracy lines, predictions files, broken files reported, runs without torch,
one-line errors."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import infer.session as session_module
from infer.infer_onnx import main
from infer.runner import PreprocessOverrides, run_inference
from infer.pipeline import load_normalized
from infer.report import softmax
from src.export.onnx_export import export_source
from src.export.source import ExportSource
from src.common.preprocess import DatasetError, Preprocess, list_class_folders
from tests.helpers_data import class_name, make_image_folder, write_broken_file
from tests.test_export import conditioned_model

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "infer" / "infer_onnx.py"
SIZE = 32
NUM_CLASSES = 3
PER_CLASS = 7  # 21 images: batches of 4 leave a partial last batch
CLASSES = [class_name(i) for i in range(NUM_CLASSES)]
ABS_TOL = 1e-4
QUIET = dict(device_target="CPU", intra_op_threads=1, num_threads=2, announce=lambda _: None)
# A torch that cannot be imported, found before the real one: the runner must not need it.
BLOCKED_PACKAGE = 'raise ImportError("torch is not installed here (blocked by the test)")\n'


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _export(folder: Path, name: str, classes, batch_size=None, seed=0):
    model, pre = conditioned_model("efficientnet_b0", num_classes=NUM_CLASSES, size=SIZE, seed=seed)
    source = ExportSource(model, "efficientnet_b0", NUM_CLASSES, classes, pre, "test")
    result = export_source(source, str(folder / name), batch_size=batch_size, count_ops=False,
                           announce=lambda _: None, intra_op_threads=1)
    return model, pre, result.path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """An exported 3-class B0 (32 px), a labelled val folder with one broken and one non-image file,
    an unlabelled folder, and a sandbox where `import torch` fails."""
    root = tmp_path_factory.mktemp("infer")
    model, pre, onnx_path = _export(root, "b0", CLASSES)
    data = make_image_folder(root / "data", classes=NUM_CLASSES, per_class=PER_CLASS, size=(48, 40), split="val")
    broken = write_broken_file(data / "val" / CLASSES[1] / "img_broken.jpg")
    (data / "val" / CLASSES[2] / "README.txt").write_text("not an image")
    unlabelled = make_image_folder(root / "unlabelled", classes=1, per_class=5, size=(40, 52)) / CLASSES[0]
    blocked = root / "no_torch"
    for name in ("torch", "torchvision"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(BLOCKED_PACKAGE)
    _, samples = list_class_folders(data / "val")
    readable = [(p, label) for p, label in samples if p != str(broken)]
    x = torch.from_numpy(np.stack([load_normalized(p, pre) for p, _ in readable]))
    with torch.inference_mode():
        logits = model(x).numpy()
    return dict(root=root, model=model, pre=pre, onnx=onnx_path, data=data, broken=str(broken),
                unlabelled=unlabelled, blocked=blocked, readable=readable, torch_logits=logits)


def _expected_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    order = np.argsort(-logits, axis=1)[:, :k]
    return float((order == labels[:, None]).any(axis=1).mean())


def _no_torch_env(blocked: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(blocked)}


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
def test_runner_logits_and_accuracy_equal_pytorch_on_the_same_images(env):
    result = run_inference(env["onnx"], env["data"], batch_size=4, **QUIET)
    assert result.files == [p for p, _ in env["readable"]]  # listing order, broken file left out
    assert result.labels.tolist() == [label for _, label in env["readable"]]
    np.testing.assert_allclose(result.logits, env["torch_logits"], rtol=0, atol=ABS_TOL)
    labels = np.array([label for _, label in env["readable"]])
    assert result.top1 == _expected_accuracy(env["torch_logits"], labels, 1)
    assert result.top5 is None  # 3 classes: every image is in its top 5, so none is reported
    assert result.skipped[0][0] == env["broken"] and len(result.skipped) == 1
    assert [Path(p).name for p in result.not_images] == ["README.txt"]
    assert result.timing.images == 3 * PER_CLASS and len(result.timing.batch_seconds) == 6  # 4+4+3(broken)+4+4+2


def test_cli_without_torch_prints_modelzoo_lines_and_falls_back_from_gpu_in_one_line(env, tmp_path):
    logits_file = tmp_path / "logits.npy"
    proc = subprocess.run([sys.executable, str(RUNNER), str(env["onnx"]), str(env["data"]), "--device_target", "GPU",
                           "--batch_size", "8", "--save_logits", str(logits_file)],
                          cwd=tmp_path, env=_no_torch_env(env["blocked"]), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    labels = np.array([label for _, label in env["readable"]])
    top1 = _expected_accuracy(env["torch_logits"], labels, 1)
    assert f"top-1 accuracy: {top1:.5f}\n" in out and "top-5: not shown (5 classes or fewer" in out
    assert f"images: {3 * PER_CLASS} scored (labelled)" in out
    assert f"skipped 1 unreadable file:\n  {env['broken']} (" in out
    assert "skipped 1 non-image file:" in out and "README.txt" in out
    assert "images/s end-to-end" in out and "latency per batch of 8: p50 " in out and "p99 " in out
    fallback = [line for line in (out + proc.stderr).splitlines() if "GPU" in line]
    if "CUDAExecutionProvider" not in out:  # no usable GPU here: exactly one line says so
        assert len(fallback) == 1 and fallback[0].startswith("warning: GPU requested but not usable")
    assert "EP Error" not in out + proc.stderr and "[E:onnxruntime" not in out + proc.stderr
    np.testing.assert_allclose(np.load(logits_file), env["torch_logits"], rtol=0, atol=ABS_TOL)


def test_module_form_runs_without_torch_and_writes_json_for_a_file_list(env, tmp_path):
    listing = tmp_path / "list.txt"
    files = sorted(str(p) for p in env["unlabelled"].iterdir())
    listing.write_text("# images to score\n" + "\n".join(files + [env["broken"]]) + "\n\n")
    out_json = tmp_path / "preds.json"
    probe = ("import runpy, sys; sys.argv = ['infer_onnx'] + sys.argv[1:]; "
             "code = 0\ntry:\n    runpy.run_module('infer.infer_onnx', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe, "--onnx_path", str(env["onnx"]), "--dataset_path",
                           str(listing), "--device_target", "CPU", "--topk", "2", "--output", str(out_json)],
                          cwd=REPO, env=_no_torch_env(env["blocked"]), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out_json.read_text())
    assert [p["file"] for p in report["predictions"]] == files
    assert report["skipped"][0]["file"] == env["broken"] and report["images"] == 5
    x = torch.from_numpy(np.stack([load_normalized(f, env["pre"]) for f in files]))
    with torch.inference_mode():
        probs = softmax(env["model"](x).numpy())
    for row, p in zip(report["predictions"], probs):
        best = np.argsort(-p)[:2]
        assert [t["class"] for t in row["topk"]] == [CLASSES[i] for i in best]
        assert [t["prob"] for t in row["topk"]] == pytest.approx(p[best].tolist(), abs=1e-4)


def test_unlabelled_folder_writes_csv_with_topk_columns(env, tmp_path, capsys):
    out_csv = tmp_path / "p.csv"
    assert main([str(env["onnx"]), str(env["unlabelled"]), "--device_target", "cpu", "--output", str(out_csv),
                 "--topk", "3", "--intra_op_threads", "1"]) == 0
    assert "top-1 accuracy" not in capsys.readouterr().out
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["file", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    assert len(rows) == 6
    for row in rows[1:]:
        probs = [float(v) for v in row[2::2]]
        assert sorted(row[1::2]) == CLASSES and probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_file_names_that_are_not_utf8_keep_their_bytes_in_csv_and_json(env, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    source = sorted(env["unlabelled"].iterdir())[0]
    odd = folder / os.fsdecode(b"b\xff.jpg")  # how Python names b'b\xff.jpg' on Linux
    odd.write_bytes(source.read_bytes())
    (folder / "plain.jpg").write_bytes(source.read_bytes())
    for out in (tmp_path / "p.csv", tmp_path / "p.json"):
        assert main([str(env["onnx"]), str(folder), "--device_target", "cpu", "--output", str(out),
                     "--intra_op_threads", "1"]) == 0
    rows = (tmp_path / "p.csv").read_bytes().splitlines()
    assert len(rows) == 3 and rows[1].startswith(os.fsencode(odd) + b",")
    report = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))
    assert [os.fsencode(p["file"]) for p in report["predictions"]] == [os.fsencode(odd),
                                                                       os.fsencode(folder / "plain.jpg")]


def test_labels_follow_class_names_when_folders_are_a_subset_in_another_order(env, tmp_path):
    names = ["zebra", "apple", "mango"]  # model order is not alphabetical
    _, pre, path = _export(tmp_path, "named", names)
    data = tmp_path / "val"
    for folder, source in (("mango", CLASSES[0]), ("zebra", CLASSES[1])):  # a subset: no "apple"
        (data / folder).mkdir(parents=True)
        for image in sorted((env["data"] / "val" / source).glob("img_00[0-2].jpg")):
            (data / folder / image.name).write_bytes(image.read_bytes())
    result = run_inference(path, data, **QUIET)
    assert result.labels.tolist() == [2, 2, 2, 0, 0, 0]  # mango = model class 2, zebra = 0
    assert result.class_names == names

    notes = []
    plain = tmp_path / "plain"  # none named like the model's classes, as many folders as classes
    for i, folder in enumerate(["c", "b", "a"]):
        (plain / folder).mkdir(parents=True)
        (plain / folder / "x.jpg").write_bytes((data / ["mango", "zebra", "zebra"][i] / "img_000.jpg").read_bytes())
    result = run_inference(path, plain, device_target="CPU", intra_op_threads=1, announce=notes.append)
    assert result.labels.tolist() == [0, 1, 2]  # the sorted folder index: a, b, c
    assert result.class_names == names
    assert notes == [f"note: no class folder of {plain} is named like the model's classes (e.g. WordNet ids "
                     "against category names); labels are the class folders' sorted order, as in training"]

    (plain / "c").rename(plain / "mango")  # one folder named like a model class, two not: wrong data
    with pytest.raises(DatasetError) as info:
        run_inference(path, plain, **QUIET)
    assert str(info.value) == (f"class folder 'a' in {plain} is not one of the model's 3 classes (zebra, apple, "
                               "mango); 2 class folders do not match")


def test_fixed_batch_model_pads_the_last_batch(env, tmp_path):
    _, _, fixed = _export(tmp_path, "fixed", CLASSES, batch_size=4)
    notes = []
    result = run_inference(fixed, env["data"], device_target="CPU", batch_size=32, intra_op_threads=1,
                           announce=notes.append)
    assert notes == ["note: the model has a fixed batch size of 4; running batches of 4"]
    np.testing.assert_allclose(result.logits, env["torch_logits"], rtol=0, atol=ABS_TOL)


def test_preprocessing_overrides_and_models_without_metadata(env, tmp_path):
    result = run_inference(env["onnx"], env["unlabelled"], overrides=PreprocessOverrides(
        resize=40, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), **QUIET)
    assert result.preprocess == Preprocess(40, SIZE, "bilinear", (0.5,) * 3, (0.5,) * 3)
    files = sorted(str(p) for p in env["unlabelled"].iterdir())
    x = torch.from_numpy(np.stack([load_normalized(f, result.preprocess) for f in files]))
    with torch.inference_mode():
        np.testing.assert_allclose(result.logits, env["model"](x).numpy(), rtol=0, atol=ABS_TOL)

    bare = onnx.load(str(env["onnx"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    notes = []
    result = run_inference(tmp_path / "bare.onnx", env["unlabelled"], device_target="CPU", announce=notes.append)
    assert result.preprocess == Preprocess(37, SIZE, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert result.class_names == ["class_0", "class_1", "class_2"] and "no preprocessing metadata" in notes[0]


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------
def test_gpu_providers_are_chosen_only_when_usable(monkeypatch):
    assert session_module.choose_providers("cpu").providers == ["CPUExecutionProvider"]
    monkeypatch.setattr(session_module, "_cuda_device_count", lambda: "no CUDA device found")
    choice = session_module.choose_providers("GPU")
    assert choice.providers == ["CPUExecutionProvider"] and choice.fallback_reason == "no CUDA device found"
    monkeypatch.setattr(session_module, "_cuda_device_count", lambda: 1)
    monkeypatch.setattr(session_module, "_library_problem", lambda path: None)
    assert session_module.choose_providers("GPU").providers == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(session_module, "_library_problem",
                        lambda path: "libnvinfer.so.10: cannot open" if "tensorrt" in path else None)
    assert session_module.choose_providers("GPU").providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(session_module.DeviceError, match="GPU, CPU"):
        session_module.choose_providers("TPU")
    assert 1 <= session_module.physical_cores() <= os.cpu_count()


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
BAD = {
    "missing model": (["{root}/missing.onnx", "{data}"], "model file not found"),
    "not a model": (["{data}/val/class_02/README.txt", "{data}"], "cannot load"),
    "crop the model does not take": (["{onnx}", "{data}", "--crop", "48"], "takes 32x32 input but"),
    "unknown device": (["{onnx}", "{data}", "--device_target", "TPU"], "unknown device target 'TPU'"),
    "missing dataset": (["{onnx}", "{root}/nowhere"], "does not exist"),
    "bad output suffix": (["{onnx}", "{data}", "--output", "{root}/p.xml"], ".csv or .json"),
    "unwritable output folder": (["{onnx}", "{data}", "--output", "/sys/p.csv"],  # sysfs refuses even root
                                 "--output /sys/p.csv: cannot write there (Permission denied)"),
    "missing logits folder": (["{onnx}", "{data}", "--save_logits", "{root}/nowhere/l.npy"],
                              "folder of --save_logits does not exist"),
    "zero batch": (["{onnx}", "{data}", "--batch_size", "0"], "--batch_size must be >= 1"),
    "zero crop": (["{onnx}", "{data}", "--crop", "0"], "--crop must be a number of pixels from 1 to 8192, got 0"),
    "bad mean": (["{onnx}", "{data}", "--mean", "0.5,0.5"], "3 numbers"),
    "no dataset": (["{onnx}"], "need a model and a dataset: infer_onnx.py MODEL.onnx DATA (or --onnx_path/"
                               "--dataset_path) (see --help)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_give_one_error_line_and_exit_2(env, capsys, case):
    args, expected = BAD[case]
    argv = [a.format(**{k: str(v) for k, v in env.items() if isinstance(v, (str, Path))}) for a in args]
    try:
        code = main(argv + ["--device_target", "CPU"] if "--device_target" not in argv else argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err


@pytest.mark.parametrize("args, message", [
    ([], "expected at least ONNX_PATH and DATA_PATH, got 0"),
    (["{root}/missing.onnx", "{data}"], "ONNX_PATH is not a file"),
    (["{onnx}", "{root}/nowhere"], "DATA_PATH does not exist"),
    (["{onnx}", "{data}", "NPU"], "DEVICE_TARGET must be GPU or CPU, got NPU"),
])
def test_run_infer_onnx_sh_checks_its_arguments(env, args, message):
    argv = [a.format(root=env["root"], data=env["data"], onnx=env["onnx"]) for a in args]
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_infer_onnx.sh"), *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {message}") and "Usage: bash" in proc.stderr


def test_run_infer_onnx_sh_runs_the_runner_with_extra_arguments(env, tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_infer_onnx.sh"), str(env["onnx"]), str(env["data"]),
                           "cpu", "--batch_size", "5", "--intra_op_threads", "1"],
                          cwd=tmp_path, env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "top-1 accuracy: " in proc.stdout and "latency per batch of 5:" in proc.stdout
    assert "on CPUExecutionProvider" in proc.stdout and "warning" not in proc.stdout
