"""The most confident mistakes of an evaluation: which photos the model got wrong and was surest about.

Looking at them is how one finds mislabelled photos, look-alike classes and what a fine-tune has not
learnt. Each rank keeps its own ``limit`` most confident mistakes (the softmax probability of the
wrong class it predicted), with the file path and a thumbnail of the crop the model saw; ``gather``
merges the ranks' lists under torchrun, so the result is the same as one process scoring every
image. Ties in probability go to the path that sorts first, so the list does not depend on the order
images arrive in.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from src.runtime.distributed import is_initialized

MISTAKES_KEPT = 100  # in mistakes.csv; the picture shows the first MISTAKES_SHOWN
THUMBNAIL = 96  # pixels, the longer side of each kept crop


@dataclass(frozen=True)
class Mistake:
    """One misclassified image: its path, true and predicted class (model outputs), the predicted
    class's probability, and a thumbnail (uint8 HWC) of the crop the model saw."""

    path: str
    true: int
    predicted: int
    probability: float
    thumbnail: np.ndarray | None = None


def _order(mistake: Mistake) -> tuple[float, str]:
    return -mistake.probability, mistake.path


class MistakeRecorder:
    """Keeps the ``limit`` most confident mistakes of the batches ``add`` sees (evaluate calls it).

    ``available`` turns False when a batch comes without file paths (tar shards): there is then no
    list to report."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = MISTAKES_KEPT if limit is None else limit
        self.available = True
        self._kept: list[Mistake] = []
        self._floor = -1.0  # the limit-th kept probability: candidates below it need no thumbnail

    @property
    def mistakes(self) -> list[Mistake]:
        """The most confident mistakes, most confident first."""
        self._trim()
        return list(self._kept)

    def add(self, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
            paths: Sequence[str] | None) -> None:
        """One batch: uint8 NCHW ``images`` as the model saw them, its ``logits``, the true ``labels``."""
        if paths is None:
            self.available = False
            return
        confidence, predicted = logits.detach().float().softmax(1).max(1)
        for i in (predicted != labels).nonzero().flatten().tolist():
            probability = float(confidence[i])
            if probability >= self._floor:
                self._kept.append(Mistake(str(paths[i]), int(labels[i]), int(predicted[i]), probability,
                                          _thumbnail(images[i])))
        if len(self._kept) > 2 * self.limit:
            self._trim()

    def gather(self) -> None:
        """Merge every rank's kept mistakes (a collective: all ranks call it); the same list on each."""
        if not is_initialized():
            return
        parts: list[tuple[bool, list[Mistake]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self.available, self.mistakes))
        self.available = all(available for available, _ in parts)
        self._kept = [mistake for _, kept in parts for mistake in kept]
        self._trim()

    def _trim(self) -> None:
        self._kept = sorted(self._kept, key=_order)[:self.limit]
        if len(self._kept) == self.limit:
            self._floor = self._kept[-1].probability


def _thumbnail(image: torch.Tensor) -> np.ndarray:
    """A uint8 CHW image as a small uint8 HWC array (Pillow's antialiased reduction)."""
    picture = Image.fromarray(image.detach().cpu().permute(1, 2, 0).contiguous().numpy())
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    return np.asarray(picture)


def write_mistakes_csv(mistakes: Sequence[Mistake], classes: Sequence[str], path: str) -> None:
    """rank, path, true class, predicted class, probability: one row per mistake, most confident first."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "path", "true", "predicted", "probability"])
        for rank, m in enumerate(mistakes, 1):
            writer.writerow([rank, m.path, classes[m.true], classes[m.predicted], f"{m.probability:.6f}"])
