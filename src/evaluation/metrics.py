"""Classification metrics over a whole eval set, exact across any number of processes.

Every quantity is kept as a *sum* (loss sum, correct@1, correct@k, image count, confusion
matrix) and summed over ranks with one all_reduce each, so a run on N processes with
`ShardedEvalSampler` (each image on exactly one rank, no padding) gives the same numbers as
one process. Averages are taken only at the end. Per-class correct/total come from the
confusion matrix (its diagonal and row sums), so they add up to the totals by construction.

`evaluate` is used by eval.py and by train.py's validation.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from src.evaluation.mistakes import MistakeRecorder
from src.runtime.amp import AMP_DTYPES, autocast
from src.data.transforms import to_device_normalized
from src.common.topk import NOT_SHOWN, TOP_K, shows_top_k
from src.runtime.distributed import all_reduce_sum, is_initialized

__all__ = ["TOP_K", "WORST_CLASSES", "EvalResult", "evaluate", "format_result_line",
           "format_summary", "write_confusion_csv"]

WORST_CLASSES = 5  # how many of the lowest-accuracy classes the summary names
# Slots of the packed scalar sums reduced across ranks in one call.
_LOSS, _TOP1, _TOPK, _COUNT, _BROKEN = range(5)

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EvalResult:
    """Global sums of one evaluation pass (identical on every rank after the reduction).

    ``confusion[i, j]`` counts images of true class i predicted as class j. ``seconds`` is the
    wall time of the slowest rank, so ``images_per_sec`` is the job's throughput.
    """

    loss_sum: float
    correct1: int
    correctk: int
    count: int
    confusion: np.ndarray  # int64 (C, C)
    top_k: int
    seconds: float
    broken: int = 0  # unreadable images skipped (not scored)
    broken_paths: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else math.nan

    @property
    def top1(self) -> float:
        return self.correct1 / self.count if self.count else math.nan

    @property
    def shows_top5(self) -> bool:
        """Top-5 means something only for more than 5 classes (src.common.topk)."""
        return shows_top_k(self.num_classes, self.top_k)

    @property
    def top5(self) -> float | None:
        """Top-5 accuracy; None with 5 classes or fewer (every image would count)."""
        if not self.shows_top5:
            return None
        return self.correctk / self.count if self.count else math.nan

    @property
    def images_per_sec(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else math.nan

    @property
    def per_class_correct(self) -> np.ndarray:
        return np.diag(self.confusion).copy()

    @property
    def per_class_total(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    def per_class(self, classes: Sequence[str]) -> list[dict[str, Any]]:
        """One row per class: name, correct, total, accuracy (None for a class with no images)."""
        if len(classes) != self.num_classes:
            raise ValueError(f"{len(classes)} class names for {self.num_classes} classes")
        rows = []
        for name, correct, total in zip(classes, self.per_class_correct, self.per_class_total):
            accuracy = float(correct) / float(total) if total else None
            rows.append({"class": str(name), "correct": int(correct), "total": int(total),
                         "accuracy": accuracy})
        return rows

    def per_class_summary(self, classes: Sequence[str], worst: int = WORST_CLASSES) -> dict[str, Any]:
        """Mean / population std / min / max of per-class accuracy over classes that have images,
        and the ``worst`` lowest classes (ties: class order)."""
        rows = [r for r in self.per_class(classes) if r["total"] > 0]
        if not rows:
            return {"classes_with_images": 0, "mean": None, "std": None, "min": None, "max": None,
                    "worst": []}
        acc = np.array([r["accuracy"] for r in rows], dtype=np.float64)
        order = sorted(range(len(rows)), key=lambda i: (acc[i], i))[:worst]
        return {"classes_with_images": len(rows), "mean": float(acc.mean()), "std": float(acc.std()),
                "min": float(acc.min()), "max": float(acc.max()),
                "worst": [rows[i] for i in order]}

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        """The metric part of eval.py's JSON (ModelZoo key names first)."""
        return {"Loss": _finite_or_none(self.loss), "Top_1_Acc": _finite_or_none(self.top1),
                "Top_5_Acc": _finite_or_none(self.top5), "top_k": self.top_k, "top_k_shown": self.shows_top5,
                "images": self.count, "correct_top1": self.correct1,
                "correct_top5": self.correctk if self.shows_top5 else None,
                "unreadable_images": self.broken, "seconds": self.seconds,
                "images_per_sec": _finite_or_none(self.images_per_sec),
                "per_class": self.per_class(classes),
                "per_class_summary": self.per_class_summary(classes)}


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A `src.data.dataset.Batch` (images, labels, broken) or a plain (images, labels) pair."""
    if hasattr(batch, "images"):
        return batch.images, batch.labels, list(batch.broken)
    images, labels = batch[0], batch[1]
    return images, labels, []


def _batch_loss_sum(logits: torch.Tensor, labels: torch.Tensor, criterion: Criterion | None) -> torch.Tensor:
    """Sum of per-image losses; a criterion that returns a batch mean is scaled back to a sum."""
    if criterion is None:
        return F.cross_entropy(logits, labels, reduction="sum")
    out = criterion(logits, labels).float()
    return out * labels.shape[0] if out.dim() == 0 else out.sum()


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"label {int(labels.max())} out of range for a {num_classes}-class model; "
                         f"the dataset's classes must map into the model's")


def _gather_paths(paths: list[str]) -> list[str]:
    if not is_initialized():
        return paths
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, paths)
    return [p for part in gathered for p in (part or [])]


def _max_over_ranks(value: float, device: torch.device) -> float:
    if not is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], device: torch.device | str,
             mean: Sequence[float], std: Sequence[float], num_classes: int,
             criterion: Criterion | None = None, channels_last: bool = False,
             amp: str = "none", mistakes: MistakeRecorder | None = None) -> EvalResult:
    """Score every batch ``loader`` yields and return global sums (reduced over ranks).

    ``loader`` yields uint8 NCHW images with int64 labels (`src.data.dataset.Batch` from
    `collate_skip_broken`, or ``(images, labels)``); normalisation with ``mean``/``std`` happens on
    ``device``. The loss is plain cross-entropy unless ``criterion`` is given (per-sample or
    batch-mean output). Top-k uses k = min(5, num_classes). Under torchrun every rank must call
    this (it all-reduces); give each rank a disjoint shard (`ShardedEvalSampler`) and pass the
    bare model, not a DDP wrapper. The model's train/eval mode is restored afterwards.
    ``mistakes`` sees every batch (with its ``paths``, when the loader gives them) and is gathered
    from every rank at the end.
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {list(AMP_DTYPES)}, got {amp!r}")
    device = torch.device(device)
    top_k = min(TOP_K, num_classes)
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    broken_paths: list[str] = []
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        for batch in loader:
            images, labels, broken = _unpack_batch(batch)
            broken_paths.extend(broken)
            sums[_BROKEN] += len(broken)
            if labels.numel() == 0:
                continue
            _check_labels(labels, num_classes)
            x = to_device_normalized(images, mean, std, device, channels_last)
            y = labels.to(device, non_blocking=True)
            with autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise ValueError(f"model output has shape {tuple(logits.shape)}, expected (N, {num_classes})")
            if mistakes is not None:
                mistakes.add(images, logits, labels, getattr(batch, "paths", None))
            top = logits.topk(top_k, dim=1).indices
            hits = top.eq(y.unsqueeze(1))
            sums[_LOSS] += _batch_loss_sum(logits, y, criterion).double()
            sums[_TOP1] += hits[:, 0].sum()
            sums[_TOPK] += hits.any(dim=1).sum()
            sums[_COUNT] += y.numel()
            confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes * num_classes)
        all_reduce_sum(sums)
        all_reduce_sum(confusion)
        values = sums.tolist()
        matrix = confusion.view(num_classes, num_classes).cpu().numpy()
        broken_paths = _gather_paths(broken_paths)
        if mistakes is not None:
            mistakes.gather()
        seconds = _max_over_ranks(time.perf_counter() - start, device)
    finally:
        model.train(was_training)
    return EvalResult(loss_sum=values[_LOSS], correct1=int(values[_TOP1]), correctk=int(values[_TOPK]),
                      count=int(values[_COUNT]), confusion=matrix, top_k=top_k, seconds=seconds,
                      broken=int(values[_BROKEN]), broken_paths=broken_paths)


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def format_result_line(result: EvalResult, ckpt: str) -> str:
    """ModelZoo's line: ``result: {'Loss': 1.7495, 'Top_1_Acc': 0.7980, 'Top_5_Acc': 0.9469} ckpt = <path>``."""
    top5 = "None" if result.top5 is None else f"{result.top5:.4f}"
    return f"result: {{'Loss': {result.loss:.4f}, 'Top_1_Acc': {result.top1:.4f}, 'Top_5_Acc': {top5}}} ckpt = {ckpt}"


def format_summary(result: EvalResult, classes: Sequence[str]) -> str:
    """Readable multi-line summary: counts, throughput, per-class spread and the worst classes."""
    k = result.top_k
    topk = (f"top-{k}: {result.top5 * 100:.3f}% ({result.correctk}/{result.count})" if result.shows_top5
            else NOT_SHOWN)
    lines = [f"images: {result.count} scored"
             + (f", {result.broken} unreadable skipped" if result.broken else "")
             + f" in {result.seconds:.1f} s ({result.images_per_sec:.1f} images/s)",
             f"top-1: {result.top1 * 100:.3f}% ({result.correct1}/{result.count}), {topk}, "
             f"loss (cross-entropy): {result.loss:.4f}"]
    summary = result.per_class_summary(classes)
    if summary["classes_with_images"]:
        n, total = summary["classes_with_images"], result.num_classes
        scope = f"{n} classes" if n == total else f"{n} of {total} classes (the rest have no images)"
        lines.append(f"per-class top-1 over {scope}: mean {summary['mean'] * 100:.2f}%, "
                     f"std {summary['std'] * 100:.2f}%, min {summary['min'] * 100:.2f}%, "
                     f"max {summary['max'] * 100:.2f}%")
        worst = ", ".join(f"{r['class']} {r['accuracy'] * 100:.1f}% ({r['correct']}/{r['total']})"
                          for r in summary["worst"])
        lines.append(f"worst {len(summary['worst'])} classes: {worst}")
    return "\n".join(lines)


def write_confusion_csv(result: EvalResult, classes: Sequence[str], path: str) -> None:
    """CSV with a header row of class names; one row per true class, one column per predicted."""
    if len(classes) != result.num_classes:
        raise ValueError(f"{len(classes)} class names for {result.num_classes} classes")
    # surrogateescape: a class folder name that is not valid UTF-8 is written as its original bytes
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true\\predicted", *classes])
        for name, row in zip(classes, result.confusion):
            writer.writerow([name, *(int(v) for v in row)])

