"""Scores, timing summaries and prediction files of an inference run (numpy only)."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from src.common.writable import unwritable_output
from src.common.errors import InputError

OUTPUT_FORMATS = (".csv", ".json")
LATENCY_PERCENTILES = (50, 95, 99)
MS_PER_S = 1000.0


class OutputError(InputError):
    """The requested output file cannot be written in a known format."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def topk_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """(N, k) class indices, best first; ties keep the lower index first (like argmax)."""
    k = min(k, logits.shape[1])
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits (k capped at the class count)."""
    if len(labels) == 0:
        return float("nan")
    hits = (topk_indices(logits, k) == labels[:, None]).any(axis=1)
    return float(hits.mean())


@dataclass(frozen=True)
class Timing:
    """Wall time of the whole loop (decode overlapped) and onnxruntime time per batch."""

    images: int
    wall_seconds: float
    batch_seconds: tuple[float, ...]
    batch_size: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    @property
    def model_images_per_second(self) -> float:
        total = sum(self.batch_seconds)
        return self.images / total if total > 0 else float("nan")

    def latency_ms(self) -> dict[int, float]:
        """p50/p95/p99 of onnxruntime time per batch, in milliseconds."""
        if not self.batch_seconds:
            return {p: float("nan") for p in LATENCY_PERCENTILES}
        values = np.percentile(np.asarray(self.batch_seconds) * MS_PER_S, LATENCY_PERCENTILES)
        return {p: float(v) for p, v in zip(LATENCY_PERCENTILES, values)}

    def lines(self) -> list[str]:
        lat = self.latency_ms()
        return [
            f"throughput: {self.images_per_second:.1f} images/s end-to-end (decode overlapped), "
            f"{self.model_images_per_second:.1f} images/s in onnxruntime",
            f"latency per batch of {self.batch_size}: "
            + ", ".join(f"p{p} {lat[p]:.2f} ms" for p in LATENCY_PERCENTILES),
        ]

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "batch_size": self.batch_size,
            "batches": len(self.batch_seconds),
            "wall_seconds": self.wall_seconds,
            "images_per_second": self.images_per_second,
            "model_images_per_second": self.model_images_per_second,
            "latency_ms": {f"p{p}": v for p, v in self.latency_ms().items()},
        }


def check_output_path(path: str | os.PathLike) -> str:
    """The output format ('.csv' or '.json') from the file name; fail before any work is done."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise OutputError(f"--output must end in {' or '.join(OUTPUT_FORMATS)}, got {os.fspath(path)!r}")
    check_writable_parent(path, "--output")
    return suffix


def check_writable_parent(path: str | os.PathLike, flag: str) -> None:
    """The file's folder must exist and take files (probed with a temporary file)."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise OutputError(f"folder of {flag} does not exist: {parent}")
    complaint = unwritable_output(flag, path)
    if complaint is not None:
        raise OutputError(complaint)


def prediction_rows(
    files: Sequence[str],
    logits: np.ndarray,
    class_names: Sequence[str],
    k: int,
    labels: np.ndarray | None = None,
) -> list[dict]:
    """One dict per image: file, (label), and the top-k classes with probabilities."""
    probs = softmax(logits) if len(files) else np.empty((0, len(class_names)))
    top = topk_indices(logits, k) if len(files) else np.empty((0, 0), np.int64)
    rows = []
    for i, path in enumerate(files):
        row: dict = {"file": path}
        if labels is not None:
            row["label"] = class_names[int(labels[i])]
        row["topk"] = [{"class": class_names[int(c)], "prob": float(probs[i, c])} for c in top[i]]
        rows.append(row)
    return rows


def write_predictions(path: str | os.PathLike, rows: list[dict], summary: dict) -> None:
    """CSV (file, [label], class_1, prob_1, ..., class_k, prob_k) or JSON ({summary, predictions})."""
    suffix = check_output_path(path)
    if suffix == ".json":
        Path(path).write_text(json.dumps({**summary, "predictions": rows}, indent=1), encoding="utf-8")
        return
    k = max((len(r["topk"]) for r in rows), default=0)
    labelled = any("label" in r for r in rows)
    header = ["file"] + (["label"] if labelled else [])
    for j in range(1, k + 1):
        header += [f"class_{j}", f"prob_{j}"]
    # surrogateescape: a file name that is not valid UTF-8 (os.fsdecode's surrogates) is written
    # back as its original bytes instead of failing half-way through the file
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            line = [r["file"]] + ([r.get("label", "")] if labelled else [])
            for entry in r["topk"]:
                line += [entry["class"], f"{entry['prob']:.6f}"]
            writer.writerow(line)
