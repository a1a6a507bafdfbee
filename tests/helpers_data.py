"""Tiny on-disk image data for tests: learnable class folders, broken files, odd modes, EXIF.

Every class draws a shape of its own colour and kind on a noisy background, so a small model
can learn the classes in a few steps; positions, sizes and noise vary with the seed.
"""
from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif",
              "TIFF": ".tif"}
SPLITS = {None: [None], "train": ["train"], "val": ["val"], "both": ["train", "val"]}
EXIF_ORIENTATION_TAG = 0x0112
SHAPES = ("ellipse", "rectangle", "triangle")


def class_name(index: int) -> str:
    """Zero-padded so the sorted folder order equals the class index."""
    return f"class_{index:02d}"


def class_colour(index: int, num_classes: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(index / max(num_classes, 1), 0.9, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def shape_image(index: int, num_classes: int, size: tuple[int, int],
                rng: np.random.Generator) -> Image.Image:
    """RGB image (size = (w, h)) with class `index`'s shape on a grey noisy background."""
    w, h = size
    noise = rng.integers(90, 140, size=(h, w, 1), dtype=np.uint8).repeat(3, axis=2)
    img = Image.fromarray(noise, "RGB")
    side = int(min(w, h) * rng.uniform(0.45, 0.7))
    x0 = int(rng.integers(0, max(1, w - side)))
    y0 = int(rng.integers(0, max(1, h - side)))
    box = (x0, y0, x0 + side, y0 + side)
    draw = ImageDraw.Draw(img)
    colour = class_colour(index, num_classes)
    kind = SHAPES[index % len(SHAPES)]
    if kind == "ellipse":
        draw.ellipse(box, fill=colour)
    elif kind == "rectangle":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x0, y0 + side), (x0 + side // 2, y0), (x0 + side, y0 + side)], fill=colour)
    return img


def make_image_folder(root: str | Path, classes: int = 3, per_class: int = 5,
                      size: tuple[int, int] = (40, 30), fmt: str = "JPEG",
                      split: str | None = None, seed: int = 0) -> Path:
    """Write root[/train|/val]/class_XX/img_YYY.ext; returns root.

    split: None (class folders directly in root), 'train', 'val' or 'both' (train/ and val/,
    each with `per_class` images per class, drawn with different random streams).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    root = Path(root)
    ext = EXTENSIONS[fmt.upper()]
    for split_index, sub in enumerate(SPLITS[split]):
        rng = np.random.default_rng([seed, split_index])
        base = root / sub if sub else root
        for k in range(classes):
            folder = base / class_name(k)
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                img = shape_image(k, classes, size, rng)
                img.save(folder / f"img_{j:03d}{ext}", fmt.upper())
    return root


def write_broken_file(path: str | Path, kind: str = "garbage") -> Path:
    """An image-named file that fails to decode: 'garbage' bytes, 'empty', or a 'truncated' JPEG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(b"this is not an image\x00\x01\x02" * 8)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        rng = np.random.default_rng(0)
        full = path.with_suffix(".full.tmp")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, "JPEG")
        data = full.read_bytes()
        full.unlink()
        path.write_bytes(data[: len(data) // 2])
    else:
        raise ValueError(f"unknown broken-file kind {kind!r}")
    return path


def write_odd_mode_images(folder: str | Path, size: tuple[int, int] = (40, 30)) -> dict[str, Path]:
    """One file per unusual mode; keys name the mode as Pillow reads it back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    alpha[:, w // 2:] = 255  # left half fully transparent, right half opaque
    out: dict[str, Path] = {}

    def save(key: str, img: Image.Image, name: str, fmt: str) -> None:
        out[key] = folder / name
        img.save(out[key], fmt)

    save("L", Image.fromarray(gray, "L"), "gray.png", "PNG")
    save("LA", Image.fromarray(np.stack([gray, alpha], -1), "LA"), "gray_alpha.png", "PNG")
    save("RGBA", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "rgba.png", "PNG")
    save("CMYK", Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "CMYK"),
         "cmyk.jpg", "JPEG")
    pal = Image.fromarray(rgb, "RGB").quantize(colors=8)
    pal.info["transparency"] = 0
    save("P_transparent", pal, "palette_transparent.png", "PNG")
    save("P", Image.fromarray(rgb, "RGB").quantize(colors=8), "palette.gif", "GIF")
    save("1", Image.fromarray(gray > 127), "bilevel.png", "PNG")
    save("I;16", Image.fromarray((gray.astype(np.uint16) * 257)), "gray16.png", "PNG")
    save("I", Image.fromarray(gray.astype(np.int32) * 257), "gray32.tif", "TIFF")
    save("F", Image.fromarray(gray.astype(np.float32) / 255.0), "float.tif", "TIFF")
    return out


def write_exif_jpeg(path: str | Path, img: Image.Image, orientation: int,
                    quality: int = 95) -> Path:
    """Save `img` (stored pixels, not rotated) as JPEG with the given EXIF orientation tag."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    img.save(path, "JPEG", exif=exif, quality=quality)
    return path


def smooth_photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A photo-like RGB image (smooth gradients, soft blobs, mild noise) for resampling tests.

    The smooth part is drawn at 1/4 scale and upsampled, which keeps 2000x1500 images cheap.
    """
    w, h = size
    rng = np.random.default_rng(seed)
    sw, sh = max(1, w // 4), max(1, h // 4)
    y, x = np.mgrid[0:sh, 0:sw].astype(np.float32)
    img = np.zeros((sh, sw, 3), np.float32)
    img[..., 0] = 255 * x / sw
    img[..., 1] = 255 * y / sh
    img[..., 2] = 128
    for _ in range(12):
        cx, cy = rng.uniform(0, sw), rng.uniform(0, sh)
        r = rng.uniform(0.03, 0.15) * min(sw, sh) + 1
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-120, 120, size=3).astype(np.float32)
    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    big = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.int16)
    noise = rng.integers(-3, 4, size=big.shape, dtype=np.int16)
    return Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8), "RGB")
