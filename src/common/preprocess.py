"""Image decoding and evaluation preprocessing, shared by eval.py (torch) and infer/ (no torch).

This module imports only Pillow and numpy so the ONNX runner works on machines without torch,
and so eval.py and infer/ produce the same pixels. `eval_image` reproduces torchvision's
`ImageClassification` preset on PIL input exactly: resize the shorter side (Pillow resampling,
which is always antialiased), then centre-crop, padding with zeros when the crop is larger.

Decoding (`load_rgb`) turns every file into a 3-channel 8-bit RGB image: EXIF orientation is
honoured, alpha is composited onto `ALPHA_BACKGROUND`, 16-bit and float images are scaled from
their nominal range. Any decode failure raises `UnreadableImage` naming the file.

Hostile files are unreadable too, before any large allocation: a header claiming more than
`MAX_IMAGE_PIXELS` (a "decompression bomb": a few hundred bytes claiming 100,000 x 100,000 pixels
would need 30 GB), and PNG text chunks over Pillow's limits (`PngImagePlugin.MAX_TEXT_CHUNK`,
1 MiB decompressed per chunk, and `MAX_TEXT_MEMORY`, 64 MiB in all), which Pillow reports as ValueError.
"""
from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image
from src.common.errors import InputError

__all__ = [
    "ALPHA_BACKGROUND", "DRAFT_SAFETY", "IMAGE_EXTENSIONS", "INTERPOLATIONS", "MAX_IMAGE_PIXELS", "MAX_IMAGE_SIZE",
    "DatasetError", "Preprocess", "UnreadableImage",
    "apply_draft", "center_crop_box", "decode_rgb", "draft_factor", "eval_image",
    "exif_orientation", "images_under", "is_image_file", "list_class_folders", "load_rgb", "normalize_batch",
    "open_image", "oriented_size", "resize_center_crop", "resize_shorter_side_size",
    "resolve_eval_folder", "to_rgb",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm",
)

# Interpolation names (torchvision's InterpolationMode values) -> Pillow resampling filters.
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}

# Transparent pixels carry arbitrary colour values (often black, sometimes garbage); flattening
# onto a fixed background makes them deterministic. White is what viewers show.
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# JPEG draft decoding (DCT-domain downscaling by 2, 4 or 8) is only used while the reduced image
# keeps at least DRAFT_SAFETY times the pixels the following antialiased resize needs, so the
# final resize still shrinks by >= 2x and the result stays within ~1 grey level of a full decode.
DRAFT_SAFETY: float = 2.0
DRAFT_FACTORS: tuple[int, ...] = (8, 4, 2)

# Largest resize/crop side accepted anywhere (8x B7's 600 px): beyond it a typo, not a model input.
MAX_IMAGE_SIZE = 8192

# Largest image (width x height, as its header claims) decoded anywhere: 100 megapixels, 300 MB as
# RGB, above Pillow's default (89.5 MP) so no photo Pillow accepts is lost. Pillow only warns between
# 1x and 2x its limit and raises above 2x; the project treats everything above the limit as unreadable:
# `open_image` checks the header size itself, and Pillow's warning (also raised by GIF frames and TIFF
# tiles while decoding) is turned into an error that the decoders report as UnreadableImage.
MAX_IMAGE_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
                  Image.DecompressionBombWarning)

EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> Pillow transpose that makes the image upright (EXIF 2.3 spec, tag 274).
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_AXIS_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_UINT16_MAX = 65535
_UINT8_MAX = 255


class UnreadableImage(ValueError):
    """A file that cannot be decoded as an image (corrupt, truncated, not an image)."""

    def __init__(self, path: str | os.PathLike | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class DatasetError(InputError):
    """The dataset on disk does not have the expected layout; the message says how to fix it."""


# --------------------------------------------------------------------------------------------
# Preprocess settings
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocess:
    """Eval preprocessing: shorter side -> `resize`, centre crop `crop`, normalise mean/std (0..1)."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"Preprocess.{name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Preprocess.interpolation must be one of {sorted(INTERPOLATIONS)}, "
                             f"got {self.interpolation!r}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"Preprocess.{name} needs 3 values (R, G, B), got {value!r}")
            object.__setattr__(self, name, value)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocess.std must be positive, got {self.std!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) for checkpoints and JSON."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocess":
        names = {f.name for f in fields(cls)}
        unknown, missing = set(d) - names, names - set(d)
        if unknown or missing:
            raise ValueError(f"bad preprocess dict: unknown keys {sorted(unknown)}, "
                             f"missing keys {sorted(missing)}")
        return cls(**{k: (tuple(v) if k in ("mean", "std") else v) for k, v in d.items()})

    def at_crop(self, crop: int) -> "Preprocess":
        """The same preprocessing at another crop, keeping the resize/crop ratio (B0's 256 -> 224 at
        crop 32: resize 37). A variant's published settings: src.models.weights.default_preprocess."""
        if crop == self.crop:
            return self
        return replace(self, crop=crop, resize=round(crop * self.resize / self.crop))

    def override(self, resize: int | None = None, crop: int | None = None, interpolation: str | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> "Preprocess":
        """These settings with the given ones replaced (None keeps them): the one rule for eval.py,
        train.py, export.py and the runner. One of resize and crop alone keeps the resize/crop ratio
        (B0's 256 -> 224 at ``crop=32``: resize 37; at ``resize=37``: crop 32).
        ValueError names the field when a value is not allowed."""
        if resize is not None and crop is None:
            crop = round(resize * self.crop / self.resize)
        elif crop is not None and resize is None:
            resize = round(crop * self.resize / self.crop)
        changes = dict(resize=resize, crop=crop, interpolation=interpolation, mean=mean, std=std)
        return replace(self, **{key: value for key, value in changes.items() if value is not None})


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------
def open_image(path: str | os.PathLike) -> Image.Image:
    """Open lazily: reads the header (size, mode, EXIF) without decoding pixels.

    A header claiming more than MAX_IMAGE_PIXELS is unreadable even where a caller's warning filters
    (e.g. ``-W always``) keep Pillow's DecompressionBombWarning a warning."""
    try:
        img = Image.open(path)
    except _DECODE_ERRORS as e:
        raise UnreadableImage(path, f"{type(e).__name__}: {e}") from e
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise UnreadableImage(path, f"{width} x {height} pixels is over the limit of {MAX_IMAGE_PIXELS:,} "
                                    "(src.common.preprocess.MAX_IMAGE_PIXELS; a decompression bomb?)")
    return img


def exif_orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8; 1 when absent or unparsable (corrupt EXIF must not lose the pixels)."""
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - any EXIF parse problem means "no orientation"
        return 1
    return value if value in _ORIENTATION_TRANSPOSE else 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after EXIF orientation, without decoding."""
    w, h = img.size
    return (h, w) if exif_orientation(img) in _AXIS_SWAPPING_ORIENTATIONS else (w, h)


def draft_factor(available: float, needed: float, safety: float = DRAFT_SAFETY) -> int:
    """Largest JPEG reduction (8, 4, 2, else 1) that keeps `available / factor >= safety * needed`."""
    for factor in DRAFT_FACTORS:
        if available / factor >= safety * needed:
            return factor
    return 1


def apply_draft(img: Image.Image, factor: int) -> float:
    """Ask the JPEG decoder to downscale by `factor`; return the factor it actually applied.

    Must be called before the pixels are loaded. Non-JPEG files ignore it and return 1.0.
    """
    if factor <= 1:
        return 1.0
    w, h = img.size
    result = img.draft("RGB", (max(1, w // factor), max(1, h // factor)))
    if result is None:
        return 1.0
    _, box = result
    return w / box[2]


def decode_rgb(img: Image.Image, path: str | os.PathLike | None = None) -> Image.Image:
    """Decode an opened image: load pixels, apply EXIF orientation, convert to RGB."""
    try:
        img.load()
        orientation = exif_orientation(img)
        if orientation in _ORIENTATION_TRANSPOSE:
            img = img.transpose(_ORIENTATION_TRANSPOSE[orientation])
        return to_rgb(img)
    except _DECODE_ERRORS as e:
        if isinstance(e, UnreadableImage):
            raise
        raise UnreadableImage(path, f"{type(e).__name__}: {e}") from e


def load_rgb(path: str | os.PathLike, min_size: int | None = None) -> Image.Image:
    """Decode `path` to an upright 8-bit RGB image.

    min_size: when given and the file is a JPEG whose shorter side is at least
    DRAFT_SAFETY * 2 * min_size, decode it at 1/2, 1/4 or 1/8 scale (Pillow draft) so the
    shorter side stays >= DRAFT_SAFETY * min_size. Much faster on large photos; not bit-exact,
    so eval leaves it off by default and training turns it on.
    """
    with open_image(path) as img:
        if min_size is not None:
            apply_draft(img, draft_factor(min(img.size), min_size))
        return decode_rgb(img, path)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Alpha is flattened onto ALPHA_BACKGROUND."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _gray_array_to_rgb(_high_depth_to_uint8(np.asarray(img), mode))
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _high_depth_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16/32-bit integer or float pixels from their nominal range to 0..255.

    I;16: 0..65535. I (32-bit int): 0..255 when all values fit, else treated as 16-bit (how
    16-bit PNG/TIFF often arrive). F: 0..1 when all values fit, else clipped to 0..255.
    """
    if mode == "F":
        a = arr.astype(np.float64)
        finite = a[np.isfinite(a)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            a = a * _UINT8_MAX
        return np.clip(np.nan_to_num(np.rint(a)), 0, _UINT8_MAX).astype(np.uint8)
    a = arr.astype(np.int64)
    if mode == "I" and a.size and a.min() >= 0 and a.max() <= _UINT8_MAX:
        return a.astype(np.uint8)
    a = np.clip(a, 0, _UINT16_MAX)
    # round(a / 257): 65535 / 255 = 257 exactly, so 0 -> 0 and 65535 -> 255.
    return ((a * _UINT8_MAX + _UINT16_MAX // 2) // _UINT16_MAX).astype(np.uint8)


def _gray_array_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2)), "RGB")


# --------------------------------------------------------------------------------------------
# Eval geometry (torchvision ImageClassification on PIL input)
# --------------------------------------------------------------------------------------------
def resize_shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Output (w, h) when the shorter side becomes `size`; the longer side is truncated, as in
    torchvision (int(size * long / short), float arithmetic)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centre crop; a crop larger than the image extends
    past its border (Pillow fills with zeros), split as torchvision pads: smaller half first."""
    def start(extent: int) -> int:
        if crop > extent:
            return -((crop - extent) // 2)
        return int(round((extent - crop) / 2.0))  # Python's round: half to even, as torchvision

    left, top = start(width), start(height)
    return left, top, left + crop, top + crop


def resize_center_crop(img: Image.Image, resize: int, crop: int, interpolation: str) -> Image.Image:
    """Shorter side -> `resize` (skipped when already that size), then centre crop `crop`."""
    target = resize_shorter_side_size(img.width, img.height, resize)
    if target != img.size:
        img = img.resize(target, INTERPOLATIONS[interpolation])
    return img.crop(center_crop_box(img.width, img.height, crop))


def eval_image(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """Resize shorter side to pre.resize, centre-crop pre.crop -> uint8 array (crop, crop, 3).

    Returns a writable copy so torch.from_numpy can wrap it without a warning.
    """
    img = resize_center_crop(to_rgb(img), pre.resize, pre.crop, pre.interpolation)
    return np.array(img, dtype=np.uint8)


def normalize_batch(batch: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC (or HWC) -> float32 NCHW (or CHW): (x / 255 - mean) / std, all in float32."""
    if batch.dtype != np.uint8 or batch.ndim not in (3, 4) or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N,)H,W,3 array, got {batch.dtype} {batch.shape}")
    x = batch.astype(np.float32) / np.float32(_UINT8_MAX)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    axes = (0, 3, 1, 2) if x.ndim == 4 else (2, 0, 1)
    return np.ascontiguousarray(x.transpose(axes))


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------
def is_image_file(path: str | os.PathLike) -> bool:
    """True for supported extensions (any case) and not hidden (macOS '._x.jpg' files are not images)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def images_under(folder: str | os.PathLike) -> list[str]:
    """Image files anywhere below ``folder`` (links followed, hidden folders skipped), sorted per folder."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
    return found


def list_class_folders(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes = sorted sub-folder names of `root`; samples = (path, class index), sorted.

    Images may sit in nested folders inside a class folder. Raises DatasetError when root is
    missing, has no class folders, or some class folders hold no images.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset path does not exist: {root}")
    if not root.is_dir():
        raise DatasetError(f"dataset path is not a folder: {root}")
    classes = _class_dirs(root)
    if not classes:
        loose = sum(1 for f in os.listdir(root) if is_image_file(f))
        hint = (f" ({loose} images lie directly in it: move them into one folder per class)"
                if loose else "")
        raise DatasetError(f"no class folders in {root}{hint}; expected {root}/<class>/<image>")
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    for index, name in enumerate(classes):
        images = images_under(root / name)
        if not images:
            empty.append(name)
        samples.extend((p, index) for p in images)
    if empty:
        shown = ", ".join(empty[:10]) + (f" ... ({len(empty)} in all)" if len(empty) > 10 else "")
        raise DatasetError(
            f"class folders with no images in {root}: {shown}; add images "
            f"({', '.join(IMAGE_EXTENSIONS)}) or remove those folders")
    return classes, samples


SPLIT_FOLDERS = ("train", "val", "test")


def resolve_eval_folder(root: str | os.PathLike) -> Path:
    """A dataset root's val/ when it holds class folders, else the folder itself.

    A root of split folders without a usable val/ is an error: scoring it would take "train" for a
    class name."""
    root = Path(root)
    val = root / "val"
    if val.is_dir() and _class_dirs(val):
        return val
    train = root / "train"
    if root.is_dir() and train.is_dir() and _class_dirs(train) and set(_class_dirs(root)) <= set(SPLIT_FOLDERS):
        raise DatasetError(f"{root} has a train/ split but no val/ with class folders; put held-out images in "
                           f"{val}/<class>/, or pass a folder of class folders (e.g. {train} to score the "
                           "training images)")
    return root

