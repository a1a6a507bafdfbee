"""Hostile image files (issue 11, point 11): decompression bombs and PNG text bombs are skipped and
counted like any unreadable file in training, eval.py and the ONNX runner, before any large allocation.

The files are a few hundred bytes to a few KB: real tiny images whose headers are patched (PNG IHDR with a
recomputed CRC, JPEG SOF) to claim huge sizes, and a PNG whose zTXt chunk inflates past Pillow's limit.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile, PngImagePlugin

import train
from infer.runner import run_inference
from src.common.errors import BrokenImageWarning
from src.export.onnx_export import export_source
from src.export.source import ExportSource
from src.common.preprocess import MAX_IMAGE_PIXELS, UnreadableImage, list_class_folders, load_rgb, open_image
from src.data.transforms import decode_crop_resize
from tests.helpers_data import class_name, make_image_folder
from tests.test_export import conditioned_model

# As src.common.preprocess sets for every process (pytest replaces the filters it installed at import).
pytestmark = pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
CLASSES = [class_name(i) for i in range(2)]
PER_CLASS = 6
WARN_BAND = (12_000, 10_000)  # 120 MP: over the project limit, under 2x (Pillow alone would only warn)


def _tiny(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_claiming(path: Path, width: int, height: int) -> Path:
    """An 8 x 8 PNG whose IHDR (with a valid CRC) claims width x height."""
    data = _tiny("PNG")
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + data[24:29]  # depth, colour type, compression, filter, interlace
    path.write_bytes(data[:8] + _png_chunk(b"IHDR", ihdr) + data[33:])
    return path


def write_jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """An 8 x 8 baseline JPEG whose SOF0 segment claims width x height (at most 65535 each)."""
    data = bytearray(_tiny("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)  # after marker, length and precision
    path.write_bytes(bytes(data))
    return path


def write_png_text_bomb(path: Path) -> Path:
    """An 8 x 8 PNG with a zTXt chunk of ~2 KB that inflates to 2 x PngImagePlugin.MAX_TEXT_CHUNK."""
    data = _tiny("PNG")
    text = b"Comment\0\0" + zlib.compress(b" " * (2 * PngImagePlugin.MAX_TEXT_CHUNK), 9)
    path.write_bytes(data[:33] + _png_chunk(b"zTXt", text) + data[33:])
    return path


HOSTILE = {  # file name -> (writer, fragment of the reason it is skipped: Pillow's message or the project's)
    "zz_bomb.png": (lambda p: write_png_claiming(p, 100_000, 100_000), "decompression bomb"),
    "zz_bomb.jpg": (lambda p: write_jpeg_claiming(p, 60_000, 60_000), "decompression bomb"),
    "zz_bomb_warn_band.png": (lambda p: write_png_claiming(p, *WARN_BAND), "decompression bomb"),
    "zz_text_bomb.png": (write_png_text_bomb, "MAX_TEXT_CHUNK"),
}


def add_hostile_files(folder: Path) -> list[str]:
    """One of each hostile file, alternating between the class folders; returns their paths."""
    paths = []
    for i, (name, (write, _)) in enumerate(HOSTILE.items()):
        paths.append(str(write(folder / CLASSES[i % len(CLASSES)] / name)))
    return paths


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fails the test if Pillow decodes pixels: the header check must come before the allocation."""
    def load(self):
        raise AssertionError(f"pixels of a {self.size} image were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_file_is_unreadable_before_its_pixels_are_decoded(name, tmp_path, no_pixel_decoding):
    write, reason = HOSTILE[name]
    path = write(tmp_path / name)
    assert path.stat().st_size < 4096
    with pytest.raises(UnreadableImage) as caught:
        load_rgb(path)
    assert caught.value.path == str(path) and reason in caught.value.reason
    with pytest.raises(UnreadableImage):  # training's draft decoder (random resized crop)
        decode_crop_resize(str(path), (0, 0, 8, 8), SIZE, "bilinear")


def test_over_the_limit_is_unreadable_even_where_warnings_stay_warnings(tmp_path, no_pixel_decoding):
    """Pillow only warns between 1x and 2x its limit; `-W always` must not let such a file decode."""
    path = write_png_claiming(tmp_path / "band.png", *WARN_BAND)
    assert MAX_IMAGE_PIXELS < WARN_BAND[0] * WARN_BAND[1] <= 2 * MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnreadableImage, match="12000 x 10000 pixels is over the limit of 100,000,000"):
            load_rgb(path)
    assert [w.category for w in caught] == [Image.DecompressionBombWarning]  # Pillow alone would have decoded it


def test_a_header_at_the_limit_still_opens(tmp_path, no_pixel_decoding):
    """The limit sits above Pillow's default (89.5 MP), so a photo Pillow accepts is not refused."""
    path = write_png_claiming(tmp_path / "big_header.png", 10_000, 10_000)  # exactly the limit
    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS == 10_000 * 10_000
    with open_image(path) as img:
        assert img.size == (10_000, 10_000)


# --------------------------------------------------------------------------------------------
# Training, eval.py and the ONNX runner
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """2 classes x 6 train and val images, the 4 hostile files in train/ and in a copy of val/."""
    root = tmp_path_factory.mktemp("hostile")
    make_image_folder(root / "data", classes=2, per_class=PER_CLASS, size=(36, 36), split="both", seed=3)
    train_hostile = add_hostile_files(root / "data" / "train")
    scored = shutil.copytree(root / "data" / "val", root / "scored")
    return dict(root=root, data=root / "data", train_hostile=train_hostile, scored=scored,
                scored_hostile=add_hostile_files(scored))


@pytest.fixture(scope="module")
def trained(data) -> dict:
    """One epoch of train.py on train/ (12 images + the 4 hostile files: 2 batches of 8), in process."""
    torch.set_num_threads(1)
    run_dir = data["root"] / "run"
    args = ["--model", "efficientnet_b0", "--device_target", "CPU", "--image_size", SIZE, "--batch_size", 8,
            "--num_workers", 0, "--augment", "light", "--epoch_size", 1, "--log_interval", 1,
            "--dataset_path", data["data"], "--save_checkpoint_path", run_dir]
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, redirect_stdout(out), redirect_stderr(err):
        warnings.simplefilter("always")
        code = train.main([str(a) for a in args])
    return dict(code=code, out=out.getvalue(), err=err.getvalue(), run_dir=run_dir,
                skipped=[str(w.message).split()[3] for w in caught if issubclass(w.category, BrokenImageWarning)])


@pytest.mark.slow
def test_training_skips_and_counts_hostile_images(trained):
    assert trained["code"] == 0, trained["err"]
    assert sorted(Path(p.rstrip(":")).name for p in trained["skipped"]) == sorted(HOSTILE)
    assert "broken images: 4" in trained["out"] and "skipped: 0 non-finite steps, 4 unreadable images" in trained["out"]
    records = [json.loads(line) for line in (trained["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["broken_images"] for r in records if "broken_images" in r] == [4]
    assert "Traceback" not in trained["out"] + trained["err"]


@pytest.mark.slow
def test_eval_py_skips_and_counts_hostile_images_in_one_line_each(data, trained, tmp_path):
    assert trained["code"] == 0, trained["err"]
    out_json = tmp_path / "m.json"
    checkpoint = next(trained["run_dir"].glob("*-best.pth"))
    proc = subprocess.run([sys.executable, "eval.py", "--checkpoint_path", str(checkpoint),
                           "--dataset_path", str(data["scored"]), "--device_target", "CPU", "--num_workers", "0",
                           "--batch_size", "5", "--output_json", str(out_json)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out_json.read_text())
    assert (result["images"], result["unreadable_images"]) == (2 * PER_CLASS, len(HOSTILE))
    lines = proc.stderr.splitlines()  # one-line warnings only: no Pillow warning, no traceback
    assert all(line.startswith("warning: ") for line in lines), proc.stderr
    skipped = [line.split()[4] for line in lines if line.startswith("warning: skipping unreadable image ")]
    assert sorted(Path(p.rstrip(":")).name for p in skipped) == sorted(HOSTILE)


def test_onnx_runner_skips_and_counts_hostile_images(data, tmp_path):
    torch.set_num_threads(1)
    model, pre = conditioned_model("efficientnet_b0", num_classes=len(CLASSES), size=SIZE)
    source = ExportSource(model, "efficientnet_b0", len(CLASSES), CLASSES, pre, "test")
    onnx_path = export_source(source, str(tmp_path / "b0"), count_ops=False, announce=lambda _: None,
                              intra_op_threads=1).path
    result = run_inference(onnx_path, data["scored"], device_target="CPU", batch_size=4, intra_op_threads=1,
                           num_threads=2, announce=lambda _: None)
    _, samples = list_class_folders(data["scored"])
    readable = [p for p, _ in samples if p not in data["scored_hostile"]]
    assert result.files == readable and result.timing.images == 2 * PER_CLASS
    assert sorted(f for f, _ in result.skipped) == sorted(data["scored_hostile"])
    reasons = {Path(f).name: r for f, r in result.skipped}
    assert all(fragment in reasons[name] for name, (_, fragment) in HOSTILE.items()), reasons
