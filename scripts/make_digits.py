"""Write scikit-learn's 8x8 handwritten digits (1,797 real scans, 10 classes) as an image folder.

    python scripts/make_digits.py data/digits

Layout: DIR/train/<digit>/<index>.png and DIR/val/<digit>/<index>.png, 8-bit grayscale PNGs at
the original 8x8 (the 0..16 ink levels scaled to 0..255); the training pipeline resizes them.
The validation split is a fixed, stratified 20% (the same files on every machine), so train.py,
eval.py and the ONNX runner all score the same images. Needs no network: the data ships inside
scikit-learn.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

VAL_FRACTION = 0.2
SPLIT_SEED = 0
INK_LEVELS = 16  # load_digits pixels are counts 0..16 of a 4x4 block of the 32x32 bitmap
UINT8_MAX = 255


def to_uint8(image: np.ndarray) -> np.ndarray:
    """0..16 ink levels -> 0..255 grey values (rounded)."""
    return np.rint(image * (UINT8_MAX / INK_LEVELS)).astype(np.uint8)


def stratified_val_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the round(n * fraction) images per class picked by a seeded permutation."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        mask[rng.permutation(members)[:round(len(members) * fraction)]] = True
    return mask


def write_digits(root: Path, fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> dict[str, int]:
    """Write the folder tree; returns the number of images per split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(int)
    val = stratified_val_mask(labels, fraction, seed)
    counts = {"train": 0, "val": 0}
    for index, (image, label) in enumerate(zip(digits.images, labels)):
        split = "val" if val[index] else "train"
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(image), "L").save(folder / f"{index:04d}.png")
        counts[split] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="output folder (created)")
    parser.add_argument("--val_fraction", type=float, default=VAL_FRACTION, help="stratified validation share")
    args = parser.parse_args(argv)
    if not 0.0 < args.val_fraction < 1.0:
        print(f"error: --val_fraction must be in (0, 1), got {args.val_fraction}", file=sys.stderr)
        return 2
    counts = write_digits(args.root, args.val_fraction)
    print(f"wrote {counts['train']} training and {counts['val']} validation digits to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
