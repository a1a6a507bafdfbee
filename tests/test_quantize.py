"""infer/quantize.py details: histogram calibration with a short last batch, the VNNI rule, and the
fp32-vs-int8 table with both speeds."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import export as export_entry
from helpers_models import FLOWERS_DIR
from infer import quantize
from src.models import build_model

SIZE = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", num_classes=6).eval()
    path = tmp_path_factory.mktemp("ckpt") / "lite0.pth"
    classes = sorted(p.name for p in FLOWERS_DIR.iterdir() if p.is_dir())
    torch.save({"model": model.state_dict(), "model_name": "efficientnet_lite0", "classes": classes,
                "preprocess": {"resize": SIZE, "crop": SIZE, "interpolation": "bicubic",
                               "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}, path)
    return path


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_takes_a_short_last_batch(method, checkpoint, tmp_path, capsys):
    # 20 images = one batch of 16 and a short one of 4: onnxruntime's histogram collectors used to fail there.
    code = export_entry.main(["--checkpoint_path", str(checkpoint), "--file_name", str(tmp_path / "m"),
                              "--no_op_counts", "--quantize", "int8", "--calib_dir", str(FLOWERS_DIR),
                              "--calib_images", "20", "--calib_method", method, "--eval_dir", str(FLOWERS_DIR)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{method} calibration on 20 images" in out and (tmp_path / "m_int8.onnx").is_file()
    table = out[out.index("int8 vs fp32 on 24 images"):].splitlines()
    assert table[1].split() == ["top-1", "top-5", "images/s"]
    fp32, int8 = (float(table[i].split()[3]) for i in (2, 3))
    assert fp32 > 0 and int8 > 0  # both speeds are measured
    assert table[4].split()[3] == f"{int8 / fp32:.2f}x"


def test_batches_have_one_size(tmp_path):
    files = sorted(str(p) for p in FLOWERS_DIR.glob("*/*.jpg"))[:10]
    pre = quantize.Preprocess(resize=SIZE, crop=SIZE, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    reader = quantize.ImageCalibrationReader(files, pre, "input", 4)
    sizes = []
    while (batch := reader.get_next()) is not None:
        sizes.append(len(batch["input"]))
    assert sizes == [4, 4, 4] and reader.used == 10


def test_vnni_decides_the_weight_range():
    assert quantize.cpu_has_vnni("flags : fpu sse avx2 avx512f avx512_vnni") is True
    assert quantize.cpu_has_vnni("flags : fpu sse avx2 avx_vnni") is True
    assert quantize.cpu_has_vnni("flags : fpu sse avx2 fma") is False
