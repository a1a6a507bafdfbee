"""src/common/preprocess.py: torch-free decoding and eval preprocessing identical to torchvision's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from src.common.preprocess import (
    ALPHA_BACKGROUND, DatasetError, Preprocess, UnreadableImage, center_crop_box, draft_factor,
    eval_image, is_image_file, list_class_folders, load_rgb, normalize_batch, open_image,
    oriented_size, resize_shorter_side_size, resolve_eval_folder,
)
from tests.helpers_data import (
    make_image_folder, shape_image, smooth_photo, write_broken_file, write_exif_jpeg,
    write_odd_mode_images,
)

REPO = Path(__file__).resolve().parents[1]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_LIST = list(IMAGENET_MEAN)
B0 = Preprocess(256, 224, "bicubic", IMAGENET_MEAN, IMAGENET_STD)  # torchvision's B0 (test_weights checks it)


def test_import_does_not_load_torch():
    code = ("import sys, src.common.preprocess; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- parity with torchvision
@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> dict[str, Path]:
    """JPEGs of several shapes: landscape, portrait, smaller than every crop, extreme aspect,
    and one whose shorter side already equals the resize (no-resize branch)."""
    folder = tmp_path_factory.mktemp("parity")
    sizes = {"landscape": (500, 375), "portrait": (333, 500), "small": (120, 90),
             "wide": (640, 101), "short_eq_256": (300, 256)}
    out = {}
    for name, size in sizes.items():
        out[name] = folder / f"{name}.jpg"
        smooth_photo(size, seed=len(out)).save(out[name], quality=92)
    return out


def torchvision_eval_preset(resize: int, crop: int, interp: str):
    """torchvision's ImageNet eval preset (its weights' ``.transforms()``) for any sizes, from public
    v2 transforms: resize the shorter side (antialiased), centre crop, scale to [0, 1], normalise."""
    import torch
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([v2.Resize(resize, interpolation=InterpolationMode(interp), antialias=True),
                       v2.CenterCrop(crop), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def test_the_explicit_preset_is_torchvisions(jpegs):
    """The public weights' preset and the explicit transforms above agree."""
    import torch
    from torchvision.models import EfficientNet_B3_Weights

    weights_preset = EfficientNet_B3_Weights.IMAGENET1K_V1.transforms()  # resize 320, crop 300, bicubic
    for name, path in jpegs.items():
        img = Image.open(path).convert("RGB")
        # same pixels; /255 there, *(1/255) here: within a float32 rounding step of values up to ~2.7
        torch.testing.assert_close(weights_preset(img), torchvision_eval_preset(320, 300, "bicubic")(img),
                                   rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("resize,crop,interp", [
    (256, 224, "bicubic"),   # B0
    (320, 300, "bicubic"),   # B3
    (256, 224, "bilinear"),
    (200, 224, "bilinear"),  # crop larger than the resized image: zero padding
])
def test_eval_image_matches_torchvision_preset(jpegs, resize, crop, interp):
    import torch

    reference = torchvision_eval_preset(resize, crop, interp)
    pre = Preprocess(resize, crop, interp, IMAGENET_MEAN, IMAGENET_STD)
    for name, path in jpegs.items():
        img = Image.open(path).convert("RGB")
        ours = normalize_batch(eval_image(img, pre)[None], pre.mean, pre.std)[0]
        theirs = reference(img).numpy()
        assert ours.shape == theirs.shape == (3, crop, crop), name
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6, err_msg=name)
        # and the uint8 pixels themselves are identical
        ref_uint8 = np.rint((theirs * np.array(IMAGENET_STD)[:, None, None]
                             + np.array(IMAGENET_MEAN)[:, None, None]) * 255)
        assert np.array_equal(eval_image(img, pre).transpose(2, 0, 1), ref_uint8), name
    assert torch.is_tensor(reference(img))


def test_geometry_helpers_match_torchvision_rules():
    assert resize_shorter_side_size(500, 375, 256) == (341, 256)   # int(256 * 500 / 375)
    assert resize_shorter_side_size(333, 500, 256) == (256, 384)
    assert resize_shorter_side_size(300, 300, 256) == (256, 256)
    # (341 - 224) / 2 = 58.5 rounds half to even -> 58, as torchvision's round()
    assert center_crop_box(341, 256, 224) == (58, 16, 282, 240)
    # crop 5 wider than 2: pad (5 - 2) // 2 = 1 on the left
    assert center_crop_box(2, 5, 5) == (-1, 0, 4, 5)


def test_normalize_batch_layout_and_values():
    batch = np.zeros((2, 4, 5, 3), np.uint8)
    batch[1, :, :, 0] = 255
    out = normalize_batch(batch, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert out.dtype == np.float32 and out.shape == (2, 3, 4, 5) and out.flags.c_contiguous
    assert out[0, 0, 0, 0] == pytest.approx(-2.0)
    assert out[1, 0, 3, 4] == pytest.approx(2.0)
    assert out[1, 1, 0, 0] == pytest.approx(-1.0)
    assert normalize_batch(batch[0], (0, 0, 0), (1, 1, 1)).shape == (3, 4, 5)
    with pytest.raises(ValueError, match="uint8"):
        normalize_batch(batch.astype(np.float32), (0, 0, 0), (1, 1, 1))


# ---------------------------------------------------------------- Preprocess settings
def test_preprocess_dict_round_trip_and_another_crop():
    pre = B0
    d = pre.to_dict()
    assert d == {"resize": 256, "crop": 224, "interpolation": "bicubic",
                 "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert Preprocess.from_dict(d) == pre
    assert Preprocess(np.int64(256), 224, "bilinear", MEAN_LIST, IMAGENET_STD).resize.__class__ is int
    small = B0.at_crop(32)
    assert small == Preprocess(37, 32, "bicubic", IMAGENET_MEAN, IMAGENET_STD)  # round(32 * 256 / 224) = 37
    assert B0.at_crop(224) is B0
    b3 = Preprocess(320, 300, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
    assert b3.at_crop(260).resize == 277  # round(277.33)


def test_preprocess_rejects_bad_values():
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(256, 224, "cubic", IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="crop"):
        Preprocess(256, 0, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="mean"):
        Preprocess(256, 224, "bicubic", (0.5, 0.5), IMAGENET_STD)
    with pytest.raises(ValueError, match="unknown keys \\['size'\\]"):
        Preprocess.from_dict({**B0.to_dict(), "size": 3})


# ---------------------------------------------------------------- decoding
def test_odd_modes_become_rgb_with_expected_pixels(tmp_path):
    files = write_odd_mode_images(tmp_path, size=(40, 30))
    gray = np.asarray(Image.open(files["L"]))
    for mode, path in files.items():
        assert Image.open(path).mode == mode.split("_")[0], mode
        img = load_rgb(path)
        assert img.mode == "RGB" and img.size == (40, 30), mode
    for mode in ("L", "I;16", "I", "F"):   # high-depth files hold gray * 257 or gray / 255
        arr = np.asarray(load_rgb(files[mode]))
        assert np.array_equal(arr, np.repeat(gray[:, :, None], 3, axis=2)), mode
    for mode in ("RGBA", "LA"):            # left half transparent -> background colour
        arr = np.asarray(load_rgb(files[mode]))
        assert (arr[:, :20] == ALPHA_BACKGROUND).all(), mode
    rgba = np.asarray(Image.open(files["RGBA"]))
    assert np.array_equal(np.asarray(load_rgb(files["RGBA"]))[:, 20:], rgba[:, 20:, :3])
    pal = Image.open(files["P_transparent"])
    transparent = np.asarray(pal) == pal.info["transparency"]
    assert transparent.any()
    assert (np.asarray(load_rgb(files["P_transparent"]))[transparent] == ALPHA_BACKGROUND).all()
    cmyk = np.asarray(Image.open(files["CMYK"]).convert("RGB"))
    assert np.array_equal(np.asarray(load_rgb(files["CMYK"])), cmyk)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = shape_image(1, 3, (48, 32), np.random.default_rng(orientation))
    path = write_exif_jpeg(tmp_path / "exif.jpg", stored, orientation)
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    expected_size = (32, 48) if orientation >= 5 else (48, 32)
    assert upright.size == expected_size
    with open_image(path) as img:
        assert oriented_size(img) == expected_size   # from the header, no decode
    assert np.array_equal(np.asarray(load_rgb(path)), np.asarray(upright))


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated"])
def test_broken_file_raises_unreadable_image_naming_it(tmp_path, kind):
    path = write_broken_file(tmp_path / f"bad_{kind}.jpg", kind)
    with pytest.raises(UnreadableImage, match=f"bad_{kind}.jpg") as info:
        load_rgb(path)
    assert isinstance(info.value, ValueError) and info.value.path == str(path)


# ---------------------------------------------------------------- JPEG draft fast path
def test_draft_factor_keeps_safety_margin():
    assert draft_factor(4000, 256) == 4      # 4000 / 4 = 1000 >= 512, / 8 = 500 < 512
    assert draft_factor(1023, 256) == 1
    assert draft_factor(1024, 256) == 2
    assert draft_factor(5000, 224) == 8


def test_load_rgb_draft_reduces_big_jpeg_within_tolerance(tmp_path):
    path = tmp_path / "big.jpg"
    photo = smooth_photo((2000, 1500), seed=3)
    photo.save(path, quality=90)
    photo.save(tmp_path / "big.bmp")
    assert load_rgb(path).size == (2000, 1500)
    assert load_rgb(path, min_size=256).size == (1000, 750)   # 1500 / 2 >= 2 * 256
    assert load_rgb(path, min_size=150).size == (500, 375)    # 1500 / 4 >= 2 * 150
    assert load_rgb(tmp_path / "big.bmp", min_size=150).size == (2000, 1500)  # not a JPEG
    pre = Preprocess(256, 224, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
    exact = eval_image(load_rgb(path), pre).astype(np.int16)
    fast = eval_image(load_rgb(path, min_size=pre.resize), pre).astype(np.int16)
    diff = np.abs(exact - fast)
    assert diff.mean() < 0.5 and diff.max() <= 4


def test_draft_honours_exif_orientation(tmp_path):
    path = write_exif_jpeg(tmp_path / "rot.jpg", smooth_photo((1600, 1200), seed=4), 6, quality=90)
    full, fast = load_rgb(path), load_rgb(path, min_size=200)
    assert full.size == (1200, 1600) and fast.size == (600, 800)
    reduced = np.asarray(full.resize(fast.size, Image.Resampling.BOX), dtype=np.int16)
    assert np.abs(reduced - np.asarray(fast, dtype=np.int16)).mean() < 2.0


# ---------------------------------------------------------------- folders
def test_is_image_file_is_case_insensitive():
    for name in ("a.JPEG", "b.Png", "c.webp", "d.jpg", "e.TIFF", "dir/f.bmp"):
        assert is_image_file(name), name
    for name in ("a.txt", "b.jpg.part", "._c.jpg", ".hidden.png", "noext"):
        assert not is_image_file(name), name


def test_list_class_folders_sorted_nested_and_mixed_case(tmp_path):
    make_image_folder(tmp_path, classes=3, per_class=2)
    Image.new("RGB", (8, 8)).save(tmp_path / "class_01" / "UPPER.JPEG", "JPEG")
    (tmp_path / "class_02" / "nested").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "class_02" / "nested" / "x.Png", "PNG")
    Image.new("RGB", (8, 8)).save(tmp_path / "class_02" / "y.webp", "WEBP")
    (tmp_path / "class_00" / "notes.txt").write_text("ignored")
    (tmp_path / ".cache").mkdir()
    classes, samples = list_class_folders(tmp_path)
    assert classes == ["class_00", "class_01", "class_02"]
    names = [(Path(p).relative_to(tmp_path).as_posix(), label) for p, label in samples]
    assert names == [
        ("class_00/img_000.jpg", 0), ("class_00/img_001.jpg", 0),
        ("class_01/UPPER.JPEG", 1), ("class_01/img_000.jpg", 1), ("class_01/img_001.jpg", 1),
        ("class_02/img_000.jpg", 2), ("class_02/img_001.jpg", 2), ("class_02/y.webp", 2),
        ("class_02/nested/x.Png", 2),
    ]
    assert list_class_folders(tmp_path) == (classes, samples)


def test_list_class_folders_errors_are_actionable(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        list_class_folders(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.jpg")
    with pytest.raises(DatasetError, match="1 images lie directly in it"):
        list_class_folders(tmp_path / "flat")
    make_image_folder(tmp_path / "ds", classes=2, per_class=1)
    (tmp_path / "ds" / "empty_b").mkdir()
    (tmp_path / "ds" / "empty_a").mkdir()
    (tmp_path / "ds" / "empty_a" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="class folders with no images .*: empty_a, empty_b"):
        list_class_folders(tmp_path / "ds")


def test_resolve_eval_folder(tmp_path):
    make_image_folder(tmp_path / "both", split="both", classes=2, per_class=1)
    make_image_folder(tmp_path / "flat", classes=2, per_class=1)
    (tmp_path / "emptyval" / "val").mkdir(parents=True)
    assert resolve_eval_folder(tmp_path / "both") == tmp_path / "both" / "val"
    assert resolve_eval_folder(tmp_path / "flat") == tmp_path / "flat"
    assert resolve_eval_folder(tmp_path / "emptyval") == tmp_path / "emptyval"
    make_image_folder(tmp_path / "trainonly", split="train", classes=2, per_class=1)
    with pytest.raises(DatasetError, match="trainonly has a train/ split but no val/ with class folders"):
        resolve_eval_folder(tmp_path / "trainonly")
    make_image_folder(tmp_path / "classes", classes=2, per_class=1)
    make_image_folder(tmp_path / "classes" / "train", classes=1, per_class=1)  # a class named "train": fine
    assert resolve_eval_folder(tmp_path / "classes") == tmp_path / "classes"
