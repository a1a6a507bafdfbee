"""Map-style datasets of image files and in-memory images, the stratified split, and batching that
skips broken files.

Datasets hand each sample's *path* to the transform (so training can pick a crop before
decoding) and return `(uint8 CHW tensor, label, None)`, or `(None, label, path)` when the file
cannot be decoded; `collate_skip_broken` drops those and reports their paths, so one corrupt
JPEG in a million costs a warning, not the run. Which files a data set holds, and its splits,
is src.data.sources' job.
"""
from __future__ import annotations

import random
import warnings
from collections import Counter
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from src.common.errors import BrokenImageWarning
from src.common.preprocess import UnreadableImage


Sample = tuple[Any, int]
Transform = Callable[[Any], torch.Tensor]


class Batch(NamedTuple):
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    broken: list[str]     # paths of samples dropped from this batch


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
class ImageFolderDataset(Dataset):
    """(path, label) samples decoded by `transform(path)` -> (tensor, label, None).

    A file that fails to decode gives (None, label, path) after a BrokenImageWarning.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 transform: Transform) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str | None]:
        path, label = self.samples[index]
        try:
            return self.transform(path), label, None
        except UnreadableImage as e:
            warnings.warn(f"skipping unreadable image {path}: {e.reason}", BrokenImageWarning,
                          stacklevel=2)
            return None, label, str(path)


class ArrayImageDataset(Dataset):
    """In-memory uint8 NHWC images (CIFAR) -> transform(PIL image) -> (tensor, label, None)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                 transform: Transform, name: str = "array") -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = [int(v) for v in labels]
        self.classes = list(classes)
        self.transform = transform
        self.samples = [(f"{name}[{i}]", label) for i, label in enumerate(self.labels)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, None]:
        img = Image.fromarray(self.images[index], "RGB")
        return self.transform(img), self.labels[index], None


def collate_skip_broken(batch: Sequence[tuple[torch.Tensor | None, int, str | None]]) -> Batch:
    """Stack the decodable samples; list the broken ones. All broken -> empty tensors."""
    good = [(x, y) for x, y, _ in batch if x is not None]
    broken = [str(p) for x, _, p in batch if x is None]
    if not good:
        return Batch(torch.empty((0, 3, 0, 0), dtype=torch.uint8),
                     torch.empty((0,), dtype=torch.int64), broken)
    images = torch.stack([x for x, _ in good])
    labels = torch.tensor([y for _, y in good], dtype=torch.int64)
    return Batch(images, labels, broken)


def count_images(samples: Sequence[Sample], classes: Sequence[str]) -> dict[str, int]:
    """Images per class name, in class order (classes without images count 0)."""
    counts = Counter(label for _, label in samples)
    return {name: counts.get(i, 0) for i, name in enumerate(classes)}


def stratified_split(samples: Sequence[Sample], val_fraction: float,
                     seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split per class: round(n * val_fraction) images to val, at least 1 when the class has
    >= 2 images, never all of them. Deterministic for (samples, val_fraction, seed); both
    outputs keep the input order."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_split must be in (0, 1), got {val_fraction!r}")
    by_class: dict[int, list[int]] = {}
    for index, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(index)
    rng = random.Random(seed)
    val_indices: set[int] = set()
    for label in sorted(by_class):
        indices = by_class[label]
        n = len(indices)
        n_val = 0 if n < 2 else min(n - 1, max(1, round(n * val_fraction)))
        val_indices.update(rng.sample(indices, n_val))
    train = [s for i, s in enumerate(samples) if i not in val_indices]
    val = [s for i, s in enumerate(samples) if i in val_indices]
    return train, val
