"""Quantization-aware training: the FX-prepared network, its int8 QDQ ONNX file, and train.py → eval.py
→ export.py → the ONNX runner on a QAT run.

The network under test is Google's real Lite0 (the efficientnet-lite0 wheel), on the 24 committed
flower photos, so quantization ranges and predictions are those of a trained network."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.ao.quantization import disable_fake_quant, disable_observer

from helpers_models import FLOWERS_DIR, assert_spread, calibrate, photo_batch
from src.models import qat
from src.models import build_model, build_pretrained
from src.export.qat_onnx import check_qat_structure, compare_qat, export_qat_onnx, relative_error

REPO = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
SIZE = 128  # a multiple of 32: the same static SAME pads as at 224
LITE_MEAN = LITE_STD = 0.5
TIMEOUT_S = 300
torch.set_num_threads(1)


def _observed(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    """The QAT network with its ranges observed on ``x``, then frozen, in eval mode."""
    prepared = qat.prepare_for_training(model, SIZE).train()
    with torch.no_grad():
        prepared(x)
    prepared.apply(disable_observer)
    return prepared.eval()


@pytest.fixture(scope="module")
def lite0() -> tuple[nn.Module, torch.fx.GraphModule, torch.Tensor]:
    model, _ = build_pretrained("efficientnet_lite0", "imagenet", progress=False)
    x = photo_batch(SIZE, mean=LITE_MEAN, std=LITE_STD)
    return model.eval(), _observed(model, x), x


def _onnx_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path: Path, x: torch.Tensor) -> np.ndarray:
    return _onnx_session(path).run(["logits"], {"input": x.numpy()})[0]


def _weights_are_int8_on_the_trained_grid(path: Path, model: torch.fx.GraphModule) -> int:
    """Every Conv/Gemm weight in the file is DequantizeLinear(int8) whose integers equal the
    fake-quantized folded weight / its scale exactly; returns how many were checked."""
    folded, grids = qat.fold_for_export(model)
    params = dict(folded.named_parameters())
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    checked = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear", f"{node.name} reads a float weight"
        integers, scale, zero = (inits[name] for name in dq.input)
        assert integers.dtype == np.int8 and not zero.any()
        grid = grids[node.input[1]]
        expected = grid.integers(params[node.input[1]].detach())
        np.testing.assert_array_equal(integers, expected.numpy().astype(np.int8))
        np.testing.assert_array_equal(scale, grid.scale.numpy())
        checked += 1
    return checked


def _int8_kernels(path: Path, tmp_path: Path) -> tuple[int, int]:
    """(Conv nodes in the file, QLinearConv nodes onnxruntime runs after its QDQ fusions)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    return sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node), ops.count("QLinearConv")


def test_relu6_becomes_the_quantizers_range_and_the_float_network_is_unchanged(lite0):
    model, prepared, x = lite0
    modules = dict(prepared.named_modules(remove_duplicate=False))
    called = [modules[n.target] for n in prepared.graph.nodes if n.op == "call_module"]
    assert not any(isinstance(m, nn.ReLU6) for m in called)
    relu6 = [m for m in called if isinstance(m, qat.ReLU6Quantizer)]
    assert len(relu6) == 33  # Lite0: stem + 16 blocks' expand/depthwise + head conv
    assert all(float(m.scale) == np.float32(6 / 255) and int(m.zero_point) == 0 for m in relu6)
    # Fake quantization off: exactly the float network (static SAME pads, fused conv+BN, ReLU6).
    float_qat = copy.deepcopy(prepared)
    float_qat.apply(disable_fake_quant)
    with torch.no_grad():
        want, got = model(x), float_qat(x)
    assert_spread(want)
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-4 * scale  # float32 rounding of conv+BN folding


def test_lite0_int8_file_is_the_fake_quantized_model(lite0, tmp_path):
    model, prepared, x = lite0
    path = export_qat_onnx(prepared, tmp_path / "lite0_qat.onnx", SIZE, {"model_name": "efficientnet_lite0"},
                           "input", "logits")
    assert _weights_are_int8_on_the_trained_grid(path, prepared) == 50  # 49 convs + the classifier
    convs, int8_convs = _int8_kernels(path, tmp_path)
    assert convs == int8_convs == 49
    logits = _run(path, x)
    check = compare_qat(logits, prepared, x)  # file closer to the fake-quantized model than int8 to float
    with torch.no_grad():
        fake, ref = prepared(x).numpy(), model(x).numpy()
    # Measured: the file is 0.05 from the fake-quantized model (ties rounded the other way in
    # onnxruntime's integer kernels), which is itself 0.08 from float: every image keeps its class.
    assert check.file_error < check.int8_error
    assert (logits.argmax(1) == fake.argmax(1)).sum() >= len(x) - 1
    assert (fake.argmax(1) == ref.argmax(1)).sum() >= len(x) - 1
    assert relative_error(fake, ref) == pytest.approx(check.int8_error, rel=1e-3)  # float ref: folded vs unfolded BN


def test_a_wrong_scale_in_the_file_is_caught(lite0, tmp_path):
    _, prepared, x = lite0
    path = export_qat_onnx(prepared, tmp_path / "lite0_qat.onnx", SIZE, {}, "input", "logits")
    proto = onnx.load(str(path))
    stem_scale = next(i for i in proto.graph.initializer if i.name == "features.0.0.conv.weight_scale")
    stem_scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(stem_scale) * 1.5, stem_scale.name))
    onnx.save(proto, str(tmp_path / "broken.onnx"))
    broken = compare_qat(_run(tmp_path / "broken.onnx", x), prepared, x)
    assert broken.file_error > broken.int8_error  # further from the fake-quantized model than int8 from float
    assert check_qat_structure(path, prepared) == 50
    with pytest.raises(ValueError, match="features.0.0.conv.weight's scales"):
        check_qat_structure(tmp_path / "broken.onnx", prepared)
    proto = onnx.load(str(path))  # one activation range moved: also caught
    inits = {i.name: i for i in proto.graph.initializer}
    act = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and not inits[n.input[1]].dims)
    scale = inits[act.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.01), scale.name))
    onnx.save(proto, str(tmp_path / "broken_act.onnx"))
    with pytest.raises(ValueError, match=r"activation_post_process_\d+'s range"):
        check_qat_structure(tmp_path / "broken_act.onnx", prepared)


def test_b0_silu_and_squeeze_excitation_run_in_int8(tmp_path):
    torch.manual_seed(0)
    model = build_model("efficientnet_b0", num_classes=10)
    x = photo_batch(SIZE)
    calibrate(model, x)
    prepared = _observed(model, x)
    path = export_qat_onnx(prepared, tmp_path / "b0_qat.onnx", SIZE, {}, "input", "logits", batch_size=4)
    assert _weights_are_int8_on_the_trained_grid(path, prepared) == 82  # 81 convs (SE included) + classifier
    convs, int8_convs = _int8_kernels(path, tmp_path)
    assert convs == int8_convs == 81
    assert _run(path, x[:4]).shape == (4, 10)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def test_train_qat_then_eval_export_and_runner_agree(tmp_path):
    run_dir = tmp_path / "run"
    train = _cli("train.py", "--model", "efficientnet_lite0", "--pretrained", "imagenet", "--qat", "true",
                 "--dataset_path", str(FLOWERS_DIR), "--image_size", "64", "--epoch_size", "1", "--batch_size", "8",
                 "--opt", "adamw", "--lr_max", "1e-4", "--warmup_epochs", "0", "--ema_decay", "0",
                 "--num_workers", "0", "--save_checkpoint_path", str(run_dir))
    assert train.returncode == 0, train.stderr[-2000:]
    ckpt_path = run_dir / "efficientnet_lite0-1_3.pth"
    ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    assert ckpt["qat"] == {"image_size": 64}
    assert any(k.endswith("activation_post_process_0.scale") for k in ckpt["model"])

    report = tmp_path / "eval.json"
    evaluated = _cli("eval.py", "--checkpoint_path", str(ckpt_path), "--dataset_path", str(FLOWERS_DIR),
                     "--output_json", str(report))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    top1 = json.loads(report.read_text())["Top_1_Acc"]

    onnx_path = tmp_path / "lite0_qat"
    exported = _cli("export.py", "--checkpoint_path", str(ckpt_path), "--file_name", str(onnx_path))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "int8 QDQ from quantization-aware training, 64x64" in exported.stdout
    assert "onnxruntime int8 vs the fake-quantized PyTorch model" in exported.stdout
    props = {p.key: p.value for p in onnx.load(str(onnx_path) + ".onnx").metadata_props}
    assert props["precision"] == "int8"

    ran = _cli("infer/infer_onnx.py", str(onnx_path) + ".onnx", str(FLOWERS_DIR))
    assert ran.returncode == 0, ran.stderr[-2000:]
    runner_top1 = float(next(line for line in ran.stdout.splitlines() if line.startswith("top-1")).split()[-1])
    # The runner's integer kernels may round a tie the other way: one image of 24 at most (the
    # runner prints 5 decimals).
    assert abs(runner_top1 - top1) <= 1 / 24 + 1e-5

    wrong_size = _cli("export.py", "--checkpoint_path", str(ckpt_path), "--file_name", str(tmp_path / "x"),
                      "--width", "96", "--height", "96")
    assert wrong_size.returncode != 0
    assert wrong_size.stderr.strip().splitlines() == [
        "error: this QAT model was trained at 64 px; export it at that size (--width 64 --height 64)"]


@pytest.mark.parametrize("flags, message", [
    ((), "--qat true fine-tunes trained weights: pass --pretrained CKPT"),
    (("--pretrained", "imagenet", "--amp", "bf16"), "--qat true runs in float32 (fake-quantized): drop --amp"),
    (("--pretrained", "imagenet", "--ema_decay", "0.99"), "--qat true trains without a weight EMA: set --ema_decay 0"),
])
def test_qat_bad_input_is_one_line(tmp_path, flags, message):
    proc = _cli("train.py", "--model", "efficientnet_lite0", "--qat", "true", "--dataset_path", str(FLOWERS_DIR),
                "--save_checkpoint_path", str(tmp_path / "run"), *flags)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr[-1000:]


def _pointwise_means(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each 1x1 fused conv: (mean output per channel with the float folded weight, with the int8
    weight and the current BN shift), over ``x``. A 1x1 conv's mean is linear in the input's mean."""
    out = {}
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d) and hasattr(conv, "bn") and conv.kernel_size == (1, 1) and conv.groups == 1:
            out[name] = conv
    inputs: dict[str, torch.Tensor] = {}
    hooks = [conv.register_forward_pre_hook(lambda m, a, n=name: inputs.__setitem__(n, a[0]))
             for name, conv in out.items()]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    means = {}
    with torch.no_grad():
        for name, conv in out.items():
            bn = conv.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            weight = conv.weight * scale.reshape(-1, 1, 1, 1)
            shift = bn.bias - bn.running_mean * scale
            exact = torch.nn.functional.conv2d(inputs[name], weight).mean((0, 2, 3)) + shift
            rounded = torch.nn.functional.conv2d(inputs[name], conv.weight_fake_quant(weight)).mean((0, 2, 3)) + shift
            means[name] = (exact, rounded)
    return means


def test_bias_correction_restores_each_pointwise_convs_mean_output(lite0):
    _, prepared, x = lite0
    corrected = copy.deepcopy(prepared)
    qat.correct_bias(corrected, [x])
    means = _pointwise_means(prepared, x)  # on the inputs the correction measured (one uncorrected pass)
    assert len(means) == 32  # Lite0: 15 expand (block 1 has none) + 16 project + the head
    modules = dict(corrected.named_modules())
    for name, (exact, rounded) in means.items():
        shift = (modules[name].bn.bias - dict(prepared.named_modules())[name].bn.bias).detach()
        # The BN shift added equals the mean output the int8 weights lost, to float32 rounding.
        assert torch.allclose(shift, exact - rounded, atol=1e-4 * float((exact - rounded).abs().max()) + 1e-7), name
    assert max(float((e - r).abs().max()) for e, r in means.values()) > 1e-3  # rounding did move the means
    depthwise = [m for m in qat._fused_convs(corrected) if m.groups > 1]
    assert len(depthwise) == 16 and all(
        float((m.bn.bias - dict(prepared.named_modules())[n].bn.bias).detach().abs().max()) > 0
        for n, m in corrected.named_modules() if m in depthwise)


def test_export_bias_corrected_int8_runs_in_int8_and_reports_the_table(tmp_path):
    torch.manual_seed(0)
    model = build_model("efficientnet_b0", num_classes=6)
    calibrate(model, photo_batch(64))
    ckpt = tmp_path / "b0.pth"
    torch.save({"model": model.state_dict(), "model_name": "efficientnet_b0", "classes": sorted(
        p.name for p in FLOWERS_DIR.iterdir() if p.is_dir())}, ckpt)
    out = tmp_path / "b0"
    proc = _cli("export.py", "--checkpoint_path", str(ckpt), "--model", "efficientnet_b0", "--file_name", str(out),
                "--width", "64", "--height", "64", "--no_op_counts", "--quantize", "int8",
                "--calib_dir", str(FLOWERS_DIR), "--calib_method", "bias_corrected", "--eval_dir", str(FLOWERS_DIR))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PyTorch observers + bias correction on 24 images" in proc.stdout
    assert "int8 and fp32 agree on the top-1 class of" in proc.stdout
    int8 = Path(str(out) + "_int8.onnx")
    assert {p.key: p.value for p in onnx.load(str(int8)).metadata_props}["precision"] == "int8"
    convs, int8_convs = _int8_kernels(int8, tmp_path)
    assert convs == int8_convs == 81


def test_a_resumed_qat_run_ends_with_the_same_weights(tmp_path):
    run_dir = tmp_path / "run"
    train = _cli("train.py", "--model", "efficientnet_lite0", "--pretrained", "imagenet", "--qat", "true",
                 "--dataset_path", str(FLOWERS_DIR), "--val_split", "0.25", "--image_size", "64", "--epoch_size", "2",
                 "--batch_size", "8", "--num_workers", "0", "--save_checkpoint_path", str(run_dir))
    assert train.returncode == 0, train.stderr[-2000:]
    last = run_dir / "efficientnet_lite0-2_2.pth"
    uninterrupted = torch.load(last, weights_only=True, map_location="cpu")["model"]
    last.unlink()
    resumed = _cli("train.py", "--resume", str(run_dir / "efficientnet_lite0-1_2.pth"), "--num_workers", "0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = torch.load(last, weights_only=True, map_location="cpu")["model"]
    assert again.keys() == uninterrupted.keys()  # observers, quantizer ranges and frozen BN included
    assert all(torch.equal(again[k], uninterrupted[k]) for k in again)
