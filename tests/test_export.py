"""export.py and src/onnx_export.py: every variant exports, the file computes what PyTorch computes,
metadata round-trips, fp16 / TorchScript / int8 variants work, bad input gives one error line."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import export as export_entry
from infer.metadata import INPUT_NAME, OUTPUT_NAME, parse_metadata
from infer.quantize import compare_accuracy, quantize_int8
from src.models import build_model, get_variant, list_models
from src.onnx_export import (
    DEFAULT_OPSET, FALLBACK_OPSETS, ExportError, ExportSource, export_onnx, export_source, op_counts,
    optimized_op_counts, random_batch, read_torchscript_metadata, supported_opsets, verify_onnx,
)
from src.preprocess import Preprocess, list_class_folders
from tests.helpers_data import class_name, make_image_folder

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
NUM_CLASSES = 5
FP32_ABS_TOL = 1e-4
CALIBRATION_IMAGES = 16
VARIANCE_FLOOR = 1e-3
# Ops a BN-folded EfficientNet graph may contain (SiLU = Sigmoid * x, SE gate = Sigmoid * x).
EXPECTED_OPS = {"Conv", "Sigmoid", "Mul", "Add", "GlobalAveragePool", "Flatten", "Gemm"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: OpenMP workers spin-waiting on shared, busy cores slow tiny runs 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


def conditioned_model(name: str, num_classes: int = NUM_CLASSES, size: int = SIZE, seed: int = 0,
                      pre: Preprocess | None = None):
    """A randomly initialised model with BN statistics measured on image-like inputs.

    With fresh BN statistics (mean 0, var 1) activations shrink to ~1e-13 through the depth, so
    any export would "match" trivially; calibrated statistics give unit-scale activations and
    logits of a few units, like a trained model, so a 1e-4 comparison means something.
    Channels that are nearly constant on the calibration batch get variance + 1e-3 (TF's BN
    eps), as training's noise would give them, instead of being amplified 300x.
    """
    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes)
    pre = pre or Preprocess.for_image_size(size, get_variant(name))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(random_batch(CALIBRATION_IMAGES, size, pre, seed=seed + 100))
        for bn in norms:
            bn.running_var.add_(VARIANCE_FLOOR)
    return model.eval(), pre


def export_small(tmp_path: Path, name: str = "efficientnet_b0", classes=None, **kwargs):
    model, pre = conditioned_model(name)
    source = ExportSource(model, name, NUM_CLASSES, classes, pre, "test")
    result = export_source(source, str(tmp_path / name), count_ops=False, announce=lambda _: None,
                           intra_op_threads=1, **kwargs)
    return model, pre, result


def ort_logits(path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def save_train_checkpoint(path: Path, model, name: str, pre: Preprocess, classes) -> Path:
    torch.save({"model": model.state_dict(), "epoch": 3, "step": 30, "config": {}, "model_name": name,
                "num_classes": len(classes), "classes": classes, "preprocess": pre.to_dict(),
                "optimizer": None, "lr_state": None, "ema": None, "scaler": None, "rng": {},
                "best_metric": None}, path)
    return path


# --------------------------------------------------------------------------------------------
# Every variant
# --------------------------------------------------------------------------------------------
# ~100M-parameter variants take 5-15 s each (tracing, serialising ~0.5 GB, onnxruntime load):
# marked slow so `-m "not slow"` gives a quick run; CI runs them all.
BIG_VARIANTS = {"efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_m", "efficientnet_v2_l"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG_VARIANTS else n
                                  for n in list_models()])
def test_every_variant_exports_and_onnxruntime_matches_pytorch(tmp_path, name):
    model, pre, result = export_small(tmp_path, name)
    assert result.max_abs_diff < FP32_ABS_TOL  # on the random batch export.py checks with
    with torch.inference_mode():
        ref = model(random_batch(2, SIZE, pre)).numpy()
    assert ref.shape == (2, NUM_CLASSES)
    assert np.abs(ref).max() > 0.1  # logits of a real scale: the comparison is not between tiny numbers
    counts = op_counts(result.path)
    assert set(counts) <= EXPECTED_OPS, f"unexpected ops {set(counts) - EXPECTED_OPS}"  # BN folded, no Identity
    assert counts["Gemm"] == 1 and counts["Conv"] > 50


def test_dynamic_batch_runs_at_1_and_7_and_fixed_batch_is_fixed(tmp_path):
    model, pre, result = export_small(tmp_path)
    for batch in (1, 7):
        x = random_batch(batch, SIZE, pre, seed=batch).numpy()
        got = ort_logits(result.path, x)
        assert got.shape == (batch, NUM_CLASSES)
        np.testing.assert_allclose(got, torch_logits(model, x), rtol=0, atol=FP32_ABS_TOL)
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]

    _, _, fixed = export_small(tmp_path / "fixed", batch_size=3)
    dims = onnx.load(str(fixed.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 3, SIZE, SIZE]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        ort_logits(fixed.path, random_batch(2, SIZE, pre).numpy())


def test_bn_is_folded_and_onnxruntime_fuses_silu(tmp_path):
    _, _, result = export_small(tmp_path)
    raw, optimized = op_counts(result.path), optimized_op_counts(result.path)
    assert raw["BatchNormalization"] == 0 and optimized["BatchNormalization"] == 0
    assert raw["Conv"] == 81 and raw["Gemm"] == 1  # B0: 81 convolutions (16 blocks' SE included)
    # Every SiLU (Sigmoid + Mul) is fused by onnxruntime; the file's node count drops accordingly.
    assert optimized["Sigmoid"] == 0
    assert sum(optimized.values()) < sum(raw.values()) - raw["Sigmoid"] // 2


def test_verification_fails_when_the_file_computes_something_else(tmp_path):
    _, pre, result = export_small(tmp_path)
    other, _ = conditioned_model("efficientnet_b0", seed=1)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        verify_onnx(result.path, other, SIZE, 2, pre=pre, intra_op_threads=1)


# --------------------------------------------------------------------------------------------
# Metadata and sources
# --------------------------------------------------------------------------------------------
def test_metadata_round_trips_from_a_train_checkpoint(tmp_path, capsys):
    trained_at = Preprocess(110, 96, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # not B0's defaults
    model, _ = conditioned_model("efficientnet_b0", pre=trained_at)
    classes = [f"kind {i}" for i in range(NUM_CLASSES)]
    ckpt = save_train_checkpoint(tmp_path / "efficientnet_b0-3_30.pth", model, "efficientnet_b0", trained_at, classes)
    assert export_entry.main(["--checkpoint_path", str(ckpt), "--file_name", str(tmp_path / "m"),
                              "--width", str(SIZE), "--height", str(SIZE), "--no_op_counts"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime vs PyTorch" in out and "max abs diff" in out
    proto = onnx.load(str(tmp_path / "m.onnx"))
    info = parse_metadata({p.key: p.value for p in proto.metadata_props})
    assert info.model_name == "efficientnet_b0"
    assert info.classes == classes and info.num_classes == NUM_CLASSES
    assert info.input_name == INPUT_NAME and info.output_name == OUTPUT_NAME and info.precision == "fp32"
    # The checkpoint's 110 -> 96 preprocessing, scaled to the 64 px export: resize round(64 * 110 / 96) = 73.
    assert info.preprocess == Preprocess(73, SIZE, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, SIZE, SIZE]


def test_plain_state_dict_and_pretrained_path_take_the_class_count_from_the_file(tmp_path, capsys):
    model, _ = conditioned_model("efficientnet_b0")
    weights = tmp_path / "weights.pth"
    torch.save(model.state_dict(), weights)
    for flags in (["--checkpoint_path", str(weights)], ["--pretrained", str(weights)]):
        name = tmp_path / flags[0].strip("-")
        assert export_entry.main(flags + ["--model", "efficientnet_b0", "--file_name", str(name),
                                          "--no_op_counts"]) == 0
        proto = onnx.load(str(name) + ".onnx")
        info = parse_metadata({p.key: p.value for p in proto.metadata_props})
        assert info.num_classes == NUM_CLASSES and info.classes is None
        # No checkpoint preprocessing: the variant's own (B0: 256 -> 224 bicubic) at its eval crop.
        assert info.preprocess == Preprocess.for_variant(get_variant("efficientnet_b0"))
    capsys.readouterr()


def test_pretrained_imagenet_stores_torchvision_class_names(tmp_path, monkeypatch, capsys):
    def fake_download(model, name_or_path="imagenet", progress=True):
        assert name_or_path == "imagenet"
        return model  # random weights stand in for the download (no network in tests)

    monkeypatch.setattr("src.onnx_export.load_pretrained", fake_download)
    assert export_entry.main(["--model", "efficientnet_b0", "--pretrained", "--file_name", str(tmp_path / "tv"),
                              "--width", "64", "--height", "64", "--no_op_counts"]) == 0
    info = parse_metadata({p.key: p.value for p in onnx.load(str(tmp_path / "tv.onnx")).metadata_props})
    assert info.num_classes == 1000 and len(info.classes) == 1000
    assert info.classes[0] == "tench" and info.classes[-1] == "toilet tissue"
    assert "torchvision efficientnet_b0 IMAGENET1K_V1" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# fp16, TorchScript, int8
# --------------------------------------------------------------------------------------------
def test_fp16_export_keeps_float32_io_and_is_within_1e_2_of_the_logit_scale(tmp_path):
    model, pre, result = export_small(tmp_path, fp16=True)
    proto = onnx.load(str(result.path))
    weights = [i for i in proto.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert parse_metadata({p.key: p.value for p in proto.metadata_props}).precision == "fp16"
    x = random_batch(4, SIZE, pre, seed=3).numpy()
    got, ref = ort_logits(result.path, x), torch_logits(model.float(), x)
    diff = np.abs(got - ref).max()
    assert 0 < diff <= 1e-2 * np.abs(ref).max()  # really half precision, and close


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_torchscript_export_matches_eager_and_keeps_metadata(tmp_path):
    model, pre, result = export_small(tmp_path, file_format="TORCHSCRIPT", classes=list("abcde"))
    assert result.path.suffix == ".pt" and result.max_abs_diff < FP32_ABS_TOL
    loaded = torch.jit.load(str(result.path))
    x = random_batch(5, SIZE, pre, seed=9)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=0, atol=FP32_ABS_TOL)
    meta = read_torchscript_metadata(result.path)
    assert json.loads(meta["classes"]) == list("abcde") and meta["model_name"] == "efficientnet_b0"


def probe_checkpoint(tmp_path: Path, train_dir: Path) -> Path:
    """A model that really separates the classes: conditioned random features + a ridge-fitted
    classifier. Random weights alone give near-ties that any perturbation flips."""
    from infer.pipeline import load_normalized

    model, pre = conditioned_model("efficientnet_b0", num_classes=3)
    classes, samples = list_class_folders(train_dir)
    x = torch.from_numpy(np.stack([load_normalized(p, pre) for p, _ in samples]))
    y = torch.tensor([label for _, label in samples])
    with torch.no_grad():
        feats = torch.flatten(model.avgpool(model.features(x)), 1).double()
        mean, scale = feats.mean(0), feats.std(0).mean()
        a = torch.cat([(feats - mean) / scale, torch.ones(len(feats), 1, dtype=torch.double)], 1)
        targets = torch.nn.functional.one_hot(y, 3).double() * 2 - 1
        w = torch.linalg.solve(a.T @ a + 10 * torch.eye(a.shape[1], dtype=torch.double), a.T @ targets)
        linear = model.classifier[1]
        linear.weight.copy_((w[:-1] / scale).T.float())
        linear.bias.copy_((w[-1] - (mean / scale) @ w[:-1]).float())
    return save_train_checkpoint(tmp_path / "probe.pth", model, "efficientnet_b0", pre, classes)


def test_int8_quantization_runs_and_mostly_agrees_with_fp32(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=12, size=(80, 64), split="both")
    ckpt = probe_checkpoint(tmp_path, data / "train")
    assert export_entry.main(["--checkpoint_path", str(ckpt), "--file_name", str(tmp_path / "m"), "--no_op_counts",
                              "--quantize", "int8", "--calib_dir", str(data / "train"), "--calib_images", "20",
                              "--eval_dir", str(data / "val")]) == 0
    out = capsys.readouterr().out
    assert "calibration on 20 images" in out and "int8 vs fp32 on 36 images" in out
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m_int8.onnx"
    counts = op_counts(int8)
    assert counts["QuantizeLinear"] > 50 and counts["DequantizeLinear"] > 50
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size  # int8 weights
    props = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    info = parse_metadata(props)
    assert info.precision == "int8" and info.classes == [class_name(i) for i in range(3)]
    comparison = compare_accuracy(fp32, int8, data / "val")
    assert comparison.images == 36
    assert comparison.fp32_top1 >= 0.6  # the probe model does classify
    assert comparison.agreement >= 0.8
    assert abs(comparison.int8_top1 - comparison.fp32_top1) <= 0.2


def test_quantize_without_readable_calibration_images_is_an_error(tmp_path):
    _, _, result = export_small(tmp_path)
    empty = tmp_path / "calib"
    empty.mkdir()
    (empty / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="no readable calibration images"):
        quantize_int8(result.path, tmp_path / "q.onnx", empty, announce=lambda _: None)
    assert not (tmp_path / "q.onnx").exists()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    model, pre = conditioned_model("efficientnet_b0")
    plain = folder / "plain.pth"
    torch.save(model.state_dict(), plain)
    ckpt = save_train_checkpoint(folder / "ckpt.pth", model, "efficientnet_b0", pre, list("abcde"))
    return {"plain": str(plain), "ckpt": str(ckpt), "folder": folder}


BAD_ARGS = {
    "missing checkpoint": (["--checkpoint_path", "nope.pth"], "not found"),
    "plain state_dict without model": (["--checkpoint_path", "{plain}"], "--model"),
    "model differs from checkpoint": (["--checkpoint_path", "{ckpt}", "--model", "efficientnet_b2"],
                                      "holds efficientnet_b0"),
    "unknown model": (["--checkpoint_path", "{plain}", "--model", "efficientnet_b9"], "unknown model"),
    "non-square": (["--checkpoint_path", "{ckpt}", "--width", "64", "--height", "96"], "square"),
    "bad format": (["--checkpoint_path", "{ckpt}", "--file_format", "AIR"], "ONNX, TORCHSCRIPT"),
    "quantize without calib_dir": (["--checkpoint_path", "{ckpt}", "--quantize", "int8"], "--calib_dir"),
    "eval_dir without quantize": (["--checkpoint_path", "{ckpt}", "--eval_dir", "x"], "--quantize"),
    "nothing to export": ([], "nothing to export"),
    "both sources": (["--checkpoint_path", "{ckpt}", "--pretrained", "{plain}"], "not both"),
    "zero batch": (["--checkpoint_path", "{ckpt}", "--batch_size", "0"], "--batch_size"),
    "opset 3": (["--checkpoint_path", "{ckpt}", "--width", "32", "--height", "32", "--opset", "3"],
                "--opset must be between"),
    "opset 999": (["--checkpoint_path", "{ckpt}", "--opset", "999"], "--opset must be between"),
    "negative bench_seconds": (["--checkpoint_path", "{ckpt}", "--bench_seconds", "-1"],
                               "--bench_seconds must be a positive number of seconds, got -1.0"),
    "zero bench_seconds": (["--checkpoint_path", "{ckpt}", "--benchmark", "--bench_seconds", "0"],
                           "--bench_seconds must be a positive number of seconds, got 0.0"),
    "output folder is a file": (["--checkpoint_path", "{ckpt}", "--file_name", "{plain}/out"],
                                "for --file_name (a file is in the way)"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_arguments_give_one_error_line_and_exit_2(weights, tmp_path, capsys, case):
    args, expected = BAD_ARGS[case]
    argv = [a.format(**weights) for a in args]
    if "--file_name" not in argv:
        argv += ["--file_name", str(tmp_path / "out")]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err
    assert not (tmp_path / "out.onnx").exists()


def test_opset_outside_the_exporters_range_fails_before_loading(monkeypatch, tmp_path, capsys):
    low, high = supported_opsets()
    assert low <= DEFAULT_OPSET <= high
    monkeypatch.setattr(export_entry, "load_source", lambda *a: pytest.fail("loaded before checking --opset"))
    for opset in (3, low - 1, high + 1, 999):
        assert _exit_code(["--checkpoint_path", "x.pth", "--opset", str(opset), "--file_name", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --opset must be between {low} and {high} (the range torch ")
        assert err.endswith(f"supports with constant folding), got {opset}") and "\n" not in err


def test_both_ends_of_the_opset_range_export_with_batchnorm_folded(tmp_path):
    low, high = supported_opsets()
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.SiLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.onnx.errors.OnnxExporterWarning)
        for opset in (low, high):
            path = export_onnx(tiny, tmp_path / f"tiny{opset}.onnx", 8, {}, opset=opset)
            graph = onnx.load(str(path))
            assert graph.opset_import[0].version == opset
            assert "BatchNormalization" not in {node.op_type for node in graph.graph.node}


def test_opset_range_falls_back_when_torch_does_not_publish_it(monkeypatch):
    from torch.onnx import _constants
    monkeypatch.delattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET")
    assert supported_opsets() == FALLBACK_OPSETS


def _exit_code(argv: list[str]) -> int:
    """main()'s return value, or the status argparse exits with."""
    try:
        return export_entry.main(argv)
    except SystemExit as exc:
        return exc.code


def test_export_py_in_a_real_process_benchmarks_and_errors_without_traceback(weights):
    folder = weights["folder"]
    ok = subprocess.run([sys.executable, str(REPO / "export.py"), "--checkpoint_path", weights["ckpt"],
                         "--file_name", str(folder / "cli"), "--benchmark", "--bench_seconds", "0.05",
                         "--bench_threads", "1"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "ops in file: Conv 81" in ok.stdout and "(BatchNormalization 0)" in ok.stdout
    assert "batch   1: PyTorch eager" in ok.stdout and "batch  32: PyTorch eager" in ok.stdout
    bad = subprocess.run([sys.executable, str(REPO / "export.py"), "--checkpoint_path", str(folder / "missing.pth")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
