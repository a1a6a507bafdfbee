"""export.py and src/export/onnx_export.py: every variant exports, the file computes what PyTorch computes,
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
from src.export.check import (
    DEFAULT_CHECK_TOLERANCE, FLOAT32_EPS, CheckFailed, compare, float64_reference, verification_batch,
)
from src.models import build_model, default_preprocess, list_models
from src.export.graph import op_counts, optimized_op_counts
from src.export.onnx_export import (DEFAULT_OPSET, VERIFY_IMAGES, export_onnx, export_source, random_batch,
    read_torchscript_metadata, supported_opsets, verify_onnx)
from src.export.source import ExportError, ExportSource
from src.common.preprocess import Preprocess, list_class_folders
from tests.helpers_models import FLOWERS_DIR, assert_spread, calibrated_model, photo_batch

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
NUM_CLASSES = 5
CALIBRATION_IMAGES = 16
VARIANCE_FLOOR = 1e-3
# Ops a BN-folded EfficientNet graph may contain (SiLU = Sigmoid * x, SE gate = Sigmoid * x).
EXPECTED_OPS = {"Conv", "Sigmoid", "Mul", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
LITE_OPS = {"Clip", "Constant"}  # EfficientNet-Lite: ReLU6 = Clip(0, 6), its bounds as Constant nodes


def pixels(batch: int, size: int, pre, seed: int) -> torch.Tensor:
    """Uniform random pixels normalised as ``pre`` says: the inputs a model sees (reproducible)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=generator)
    return (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)


def calibrated(name: str, num_classes: int = NUM_CLASSES, size: int = SIZE, seed: int = 0,
               pre: Preprocess | None = None):
    """``name`` calibrated on the 24 photos and the export check's synthetic photos (logits of a few
    units whose arg-max moves with the input) and the preprocessing it was calibrated with."""
    pre = pre or default_preprocess(name).at_crop(size)
    return calibrated_model(name, num_classes, pre, seed=seed), pre


def conditioned_model(name: str, num_classes: int = NUM_CLASSES, size: int = SIZE, seed: int = 0,
                      pre: Preprocess | None = None):
    """A randomly initialised model with BN statistics measured on uniform-noise images (used by
    tests/test_infer_onnx.py and tests/test_hostile_images.py; this file uses ``calibrated``).

    With fresh BN statistics (mean 0, var 1) activations shrink to ~1e-13 through the depth, so
    any export would "match" trivially; calibrated statistics give unit-scale activations and
    logits of a few units, like a trained model, so a 1e-4 comparison means something.
    Channels that are nearly constant on the calibration batch get variance + 1e-3 (TF's BN
    eps), as training's noise would give them, instead of being amplified 300x.
    """
    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes)
    pre = pre or default_preprocess(name).at_crop(size)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(pixels(CALIBRATION_IMAGES, size, pre, seed=seed + 100))
        for bn in norms:
            bn.running_var.add_(VARIANCE_FLOOR)
    return model.eval(), pre


def export_small(tmp_path: Path, name: str = "efficientnet_b0", classes=None, **kwargs):
    model, pre = calibrated(name)
    source = ExportSource(model, name, NUM_CLASSES, classes, pre, "test")
    result = export_source(source, str(tmp_path / name), count_ops=False, announce=lambda _: None,
                           intra_op_threads=1, **kwargs)
    return model, pre, result


def ort_logits(path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def assert_faithful(got: np.ndarray, model, x: torch.Tensor) -> None:
    """export.py's rule on another batch: within k x PyTorch's own float32 error of float64."""
    compare(got, float64_reference(model, x), DEFAULT_CHECK_TOLERANCE, "onnxruntime")


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
    check = result.check
    assert check.images == VERIFY_IMAGES and check.precision == "fp32"
    assert 0 < check.own_error and check.max_abs_diff == result.max_abs_diff <= check.allowed
    assert check.allowed == DEFAULT_CHECK_TOLERANCE * max(check.own_error, check.floor)
    # The file's answers depend on its input: varied classes on the 24 real photos.
    got = ort_logits(result.path, photo_batch(SIZE, mean=pre.mean, std=pre.std).numpy())
    assert got.shape == (24, NUM_CLASSES)
    assert_spread(got)
    counts = op_counts(result.path)
    expected = EXPECTED_OPS | (LITE_OPS if "lite" in name else set())
    assert set(counts) <= expected, f"unexpected ops {set(counts) - expected}"  # BN folded, no Identity
    assert counts["Gemm"] == 1 and counts["Conv"] == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def test_dynamic_batch_runs_at_1_and_7_and_fixed_batch_is_fixed(tmp_path):
    model, pre, result = export_small(tmp_path)
    for batch in (1, 7):
        x = photo_batch(SIZE, batch, mean=pre.mean, std=pre.std)
        got = ort_logits(result.path, x.numpy())
        assert got.shape == (batch, NUM_CLASSES)
        assert_faithful(got, model, x)
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]

    _, _, fixed = export_small(tmp_path / "fixed", batch_size=3)
    dims = onnx.load(str(fixed.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 3, SIZE, SIZE]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        ort_logits(fixed.path, random_batch(2, SIZE).numpy())


def test_bn_is_folded_and_onnxruntime_fuses_silu(tmp_path):
    _, _, result = export_small(tmp_path)
    raw, optimized = op_counts(result.path), optimized_op_counts(result.path)
    assert raw["BatchNormalization"] == 0 and optimized["BatchNormalization"] == 0
    assert raw["Conv"] == 81 and raw["Gemm"] == 1  # B0: 81 convolutions (16 blocks' SE included)
    # Every SiLU (Sigmoid + Mul) is fused by onnxruntime; the file's node count drops accordingly.
    assert optimized["Sigmoid"] == 0
    assert sum(optimized.values()) < sum(raw.values()) - raw["Sigmoid"] // 2


def test_verification_fails_when_the_file_computes_something_else(tmp_path):
    model, pre, result = export_small(tmp_path)
    assert verify_onnx(result.path, model, pre, intra_op_threads=1).max_abs_diff == result.max_abs_diff
    other, _ = calibrated("efficientnet_b0", seed=1)
    with pytest.raises(ExportError, match=r"onnxruntime differs from PyTorch \(float64\) by .*--check_tolerance"):
        verify_onnx(result.path, other, pre, intra_op_threads=1)


# --------------------------------------------------------------------------------------------
# The numeric check: float64 reference, PyTorch's own error, temporary file
# --------------------------------------------------------------------------------------------
def test_check_rule_is_k_times_the_larger_of_own_error_and_floor():
    """max |got - ref64| <= k * max(max |torch32 - ref64|, eps * sum |terms|), on numbers set by hand."""
    head = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.5]]))
        head.bias.copy_(torch.tensor([0.25, -8.0]))
    model = torch.nn.Sequential(torch.nn.Flatten(), head).float()
    x = torch.tensor([[1.0, 1.0, 1.0], [0.5, -1.0, 2.0]])
    ref = float64_reference(model, x)
    np.testing.assert_array_equal(ref.ref64, [[2.25, -6.5], [8.75, -14.0]])
    # sum of |terms| per logit: [6.25, 17.5] and [8.75, 16.0] -> the floor is eps * 17.5
    assert ref.floor == FLOAT32_EPS * 17.5 and ref.own_error == 0.0  # these sums are exact in float32
    allowed = 10 * FLOAT32_EPS * 17.5
    assert compare(ref.ref64 + allowed * 0.99, ref, 10, "file").allowed == allowed
    with pytest.raises(CheckFailed, match="file differs from PyTorch"):
        compare(ref.ref64 + allowed * 1.01, ref, 10, "file")
    ref.own_error = 1e-3  # PyTorch's own error, when larger than the floor, sets the bound
    assert compare(ref.ref64 + 9e-3, ref, 10, "file").allowed == pytest.approx(1e-2)
    with pytest.raises(CheckFailed, match=r"by 0.011, more than 10 x PyTorch fp32's own error 0.001 "):
        compare(ref.ref64 + 1.1e-2, ref, 10, "file")
    with pytest.raises(CheckFailed, match="by nan"):
        compare(np.full((2, 2), np.nan), ref, 10, "file")


def test_check_images_are_preprocessed_synthetic_photos_not_noise():
    pre = default_preprocess("efficientnet_b0").at_crop(SIZE)
    x = verification_batch(pre, 4)
    assert x.shape == (4, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert torch.equal(x, verification_batch(pre, 4))  # deterministic
    pixels = x * torch.tensor(pre.std).view(1, 3, 1, 1) + torch.tensor(pre.mean).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # normalised 0..1 pixels
    # Neighbouring pixels are correlated as in photos (uniform noise: 0) and the images differ.
    right = np.corrcoef(x[..., :, 1:].flatten(), x[..., :, :-1].flatten())[0, 1]
    assert right > 0.8
    assert float((x[0] - x[1]).abs().mean()) > 0.1


def _tamper_first_conv(relative: float):
    """An export_onnx that scales the file's first Conv weight by (1 + relative) after writing."""
    from src.export import onnx_export

    original = onnx_export.export_onnx

    def tampered(model, path, *args, **kwargs):
        written = original(model, path, *args, **kwargs)
        proto = onnx.load(str(written))
        name = next(node.input[1] for node in proto.graph.node if node.op_type == "Conv")
        weight = next(init for init in proto.graph.initializer if init.name == name)
        array = onnx.numpy_helper.to_array(weight) * np.float32(1 + relative)
        weight.CopyFrom(onnx.numpy_helper.from_array(array, name))
        onnx.save(proto, str(written))
        return written

    return tampered


def test_a_1e_5_error_in_one_layer_fails_the_check_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    """One convolution's weights off by 0.001% (B0 at 64 px: ~100x float32's own error on the logits)
    fail the check: exit 2, one line naming --check_tolerance, nothing at the output path."""
    model, pre = calibrated("efficientnet_b0")
    ckpt = save_train_checkpoint(tmp_path / "b0.pth", model, "efficientnet_b0", pre, list("abcde"))
    out = tmp_path / "out"
    out.mkdir()
    argv = ["--checkpoint_path", str(ckpt), "--file_name", str(out / "m"), "--no_op_counts"]
    assert _exit_code(argv) == 0  # faithful: passes
    line = capsys.readouterr().out
    assert "check: onnx.checker ok; onnxruntime vs PyTorch float64 on 4 synthetic photos: max abs diff " in line
    assert "PyTorch fp32's own error " in line and "(10 x max(own error, floor " in line
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx"]  # no temporary file left
    (out / "m.onnx").unlink()

    monkeypatch.setattr("src.export.onnx_export.export_onnx", _tamper_first_conv(1e-5))
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: onnxruntime differs from PyTorch (float64) by ")
    assert "raise --check_tolerance (now 10)" in err and f"nothing written to {out / 'm.onnx'}" in err
    assert list(out.iterdir()) == []  # neither the file nor its temporary name

    (out / "m.onnx").write_bytes(b"an earlier export")  # a failed export leaves an older file alone
    assert _exit_code(argv) == 2
    assert (out / "m.onnx").read_bytes() == b"an earlier export" and len(list(out.iterdir())) == 1

    assert _exit_code(argv + ["--check_tolerance", "1e9"]) == 0  # the override is honoured
    assert "(1e+09 x max(own error, floor " in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx"] and onnx.load(str(out / "m.onnx"))


def test_a_perturbed_onnxruntime_output_fails_the_check(tmp_path, monkeypatch):
    """The comparison reads onnxruntime's output: perturb one logit by 20x float32's own error."""
    from src.export import onnx_export

    model, pre = calibrated("efficientnet_b0")
    ref = float64_reference(model, onnx_export.check_images(pre, None))
    bump = 20 * max(ref.own_error, ref.floor)
    original = onnx_export.create_session

    class Perturbed:
        def __init__(self, session):
            self.session = session

        def run(self, names, feed):
            out = self.session.run(names, feed)
            out[0][0, 0] += bump
            return out

    monkeypatch.setattr(onnx_export, "create_session", lambda *a, **k: Perturbed(original(*a, **k)))
    source = ExportSource(model, "efficientnet_b0", NUM_CLASSES, None, pre, "test")
    with pytest.raises(ExportError, match=r"more than 10 x PyTorch fp32's own error"):
        export_source(source, str(tmp_path / "m"), count_ops=False, announce=lambda _: None, intra_op_threads=1)
    assert list(tmp_path.iterdir()) == []
    result = export_source(source, str(tmp_path / "m"), count_ops=False, announce=lambda _: None,
                           intra_op_threads=1, check_tolerance=40)
    assert DEFAULT_CHECK_TOLERANCE * max(ref.own_error, ref.floor) < result.max_abs_diff <= result.check.allowed


# --------------------------------------------------------------------------------------------
# Metadata and sources
# --------------------------------------------------------------------------------------------
def test_metadata_round_trips_from_a_train_checkpoint(tmp_path, capsys):
    trained_at = Preprocess(110, 96, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # not B0's defaults
    model, _ = calibrated("efficientnet_b0", pre=Preprocess(73, SIZE, "bilinear", trained_at.mean, trained_at.std))
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
    model, _ = calibrated("efficientnet_b0")
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
        assert info.preprocess == default_preprocess("efficientnet_b0")
    capsys.readouterr()


def test_pretrained_imagenet_stores_torchvision_class_names(tmp_path, monkeypatch, capsys):
    published = build_model("efficientnet_b0").state_dict()  # random weights stand in for the download

    def fake_download(url, **kwargs):
        assert url.startswith("https://download.pytorch.org/models/efficientnet_b0") and kwargs["weights_only"]
        return published

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    assert export_entry.main(["--model", "efficientnet_b0", "--pretrained", "--file_name", str(tmp_path / "tv"),
                              "--width", "64", "--height", "64", "--no_op_counts"]) == 0
    info = parse_metadata({p.key: p.value for p in onnx.load(str(tmp_path / "tv.onnx")).metadata_props})
    assert info.num_classes == 1000 and len(info.classes) == 1000
    assert info.classes[0] == "tench" and info.classes[-1] == "toilet tissue"
    assert "torchvision efficientnet_b0 IMAGENET1K_V1" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# fp16, TorchScript, int8
# --------------------------------------------------------------------------------------------
def test_fp16_export_keeps_float32_io_and_is_held_to_float16s_own_error(tmp_path):
    model, pre, result = export_small(tmp_path, fp16=True)
    proto = onnx.load(str(result.path))
    weights = [i for i in proto.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert parse_metadata({p.key: p.value for p in proto.metadata_props}).precision == "fp16"
    check = result.check
    assert check.precision == "fp16" and check.max_abs_diff <= check.allowed
    # Really half precision: far from float64, as PyTorch's own float16 run is (float32's error is ~1e-5).
    fp32_error = float64_reference(model, verification_batch(pre, VERIFY_IMAGES)).own_error
    assert check.own_error > 30 * fp32_error and check.max_abs_diff > 30 * fp32_error
    photos = photo_batch(SIZE, mean=pre.mean, std=pre.std)
    got = ort_logits(result.path, photos.numpy())
    assert_spread(got)
    compare(got, float64_reference(model, photos, fp16=True), DEFAULT_CHECK_TOLERANCE, "onnxruntime fp16")


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_torchscript_export_matches_eager_and_keeps_metadata(tmp_path):
    model, pre, result = export_small(tmp_path, file_format="TORCHSCRIPT", classes=list("abcde"))
    assert result.path.suffix == ".pt" and result.check.max_abs_diff <= result.check.allowed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["efficientnet_b0.pt"]  # no temporary file left
    loaded = torch.jit.load(str(result.path))
    x = photo_batch(SIZE, mean=pre.mean, std=pre.std)[::3]  # 8 photos, 6 kinds of flower
    with torch.inference_mode():
        got = loaded(x).numpy()
    assert_spread(got)
    assert_faithful(got, model, x)
    meta = read_torchscript_metadata(result.path)
    assert json.loads(meta["classes"]) == list("abcde") and meta["model_name"] == "efficientnet_b0"


def probe_checkpoint(tmp_path: Path) -> Path:
    """B0 calibrated on the 24 flower photos (as the runner preprocesses them) with a ridge-fitted
    classifier that names each photo's flower: decisive margins (a random head gives near-ties that
    any rounding flips) and answers spread over all 6 classes."""
    from infer.pipeline import load_normalized

    pre = default_preprocess("efficientnet_b0").at_crop(SIZE)
    classes, samples = list_class_folders(FLOWERS_DIR)
    x = torch.from_numpy(np.stack([load_normalized(p, pre) for p, _ in samples]))
    y = torch.tensor([label for _, label in samples])
    model = calibrated_model("efficientnet_b0", len(classes), pre, images=x)
    with torch.no_grad():
        feats = torch.flatten(model.avgpool(model.features(x)), 1).double()
        mean, scale = feats.mean(0), feats.std(0).mean()
        a = torch.cat([(feats - mean) / scale, torch.ones(len(feats), 1, dtype=torch.double)], 1)
        targets = torch.nn.functional.one_hot(y, len(classes)).double() * 2 - 1
        w = torch.linalg.solve(a.T @ a + 10 * torch.eye(a.shape[1], dtype=torch.double), a.T @ targets)
        linear = model.classifier[1]
        linear.weight.copy_((w[:-1] / scale).T.float())
        linear.bias.copy_((w[-1] - (mean / scale) @ w[:-1]).float())
    return save_train_checkpoint(tmp_path / "probe.pth", model, "efficientnet_b0", pre, classes)


# int8 vs fp32 on the 24 photos, measured (onnxruntime 1.31, AMD EPYC): a correct quantizer agrees on
# 23/24 top-1 classes with logit correlation 0.86 (a random network quantizes worse than a trained
# one); all-zero int8 weights: 4/24 and 0.00; doubled weight scales: 6/24 and 0.07.
MIN_INT8_AGREEMENT = 0.75
MIN_INT8_LOGIT_CORRELATION = 0.5


@pytest.mark.parametrize("method, says", [("bias_corrected", "bias correction on 20 images"),
                                          ("minmax", "minmax calibration on 20 images")])
def test_int8_quantization_agrees_with_fp32_where_a_broken_quantizer_cannot(method, says, tmp_path, capsys):
    from infer.runner import run_inference

    ckpt = probe_checkpoint(tmp_path)
    assert export_entry.main(["--checkpoint_path", str(ckpt), "--file_name", str(tmp_path / "m"), "--no_op_counts",
                              "--quantize", "int8", "--calib_dir", str(FLOWERS_DIR), "--calib_images", "20",
                              "--calib_method", method, "--eval_dir", str(FLOWERS_DIR)]) == 0
    out = capsys.readouterr().out
    assert says in out and "int8 vs fp32 on 24 images" in out
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m_int8.onnx"
    counts = op_counts(int8)
    assert counts["QuantizeLinear"] > 50 and counts["DequantizeLinear"] > 50
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size  # int8 weights
    info = parse_metadata({p.key: p.value for p in onnx.load(str(int8)).metadata_props})
    assert info.precision == "int8" and info.classes == list_class_folders(FLOWERS_DIR)[0]
    comparison = compare_accuracy(fp32, int8, FLOWERS_DIR)
    assert comparison.images == 24 and comparison.fp32_top1 == 1.0  # the probe names every photo's flower
    assert comparison.agreement >= MIN_INT8_AGREEMENT and comparison.int8_top1 >= MIN_INT8_AGREEMENT
    logits = {path: run_inference(path, FLOWERS_DIR, "CPU", 8, intra_op_threads=1, announce=lambda _: None).logits
              for path in (fp32, int8)}
    assert_spread(logits[int8])
    correlation = np.corrcoef(logits[fp32].ravel(), logits[int8].ravel())[0, 1]
    assert correlation >= MIN_INT8_LOGIT_CORRELATION


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
    model, pre = calibrated("efficientnet_b0")
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
    "unknown flag": (["--bogus"], "unrecognized arguments: --bogus (see python export.py --help)"),
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
    "zero check_tolerance": (["--checkpoint_path", "{ckpt}", "--check_tolerance", "0"],
                             "--check_tolerance must be a positive number, got 0.0"),
    "nan check_tolerance": (["--checkpoint_path", "{ckpt}", "--check_tolerance", "nan"],
                            "--check_tolerance must be a positive number, got nan"),
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


@pytest.mark.filterwarnings("ignore:Setting 'keep_initializers_as_inputs=False':UserWarning")  # opset 8
def test_just_outside_the_opset_range_torch_refuses_or_leaves_batchnorm(tmp_path):
    """The range is probed, not read from torch's private constants: one step past each end the
    exporter warns 'not supported' (or raises), or exports with BatchNorm unfolded."""
    low, high = supported_opsets()
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.SiLU()).eval()
    path = export_onnx(tiny, tmp_path / "below.onnx", 8, {}, opset=low - 1)
    assert "BatchNormalization" in {node.op_type for node in onnx.load(str(path)).graph.node}
    with warnings.catch_warnings(), pytest.raises((torch.onnx.errors.OnnxExporterWarning, RuntimeError)):
        warnings.simplefilter("error", torch.onnx.errors.OnnxExporterWarning)
        export_onnx(tiny, tmp_path / "above.onnx", 8, {}, opset=high + 1)


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
