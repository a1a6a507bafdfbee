"""Decode and preprocess images in a thread pool while the model runs on the previous batch.

Pillow's decoders and resamplers and numpy's arithmetic release the GIL, so a few threads keep
up with onnxruntime on a CPU, and onnxruntime's ``run`` releases it too, so decoding the next
batches overlaps inference. Each image is normalised in its worker (same float32 arithmetic as
``normalize_batch`` on a whole batch), leaving only a stack for the main thread.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from src.common.errors import InputError
from src.common.preprocess import Preprocess, UnreadableImage, eval_image, load_rgb, normalize_batch

MAX_DECODE_THREADS = 4
PREFETCH_BATCHES = 2  # batches decoded ahead of the one being run


@dataclass
class Batch:
    """One batch of consecutive files; unreadable files are left out and reported."""

    indices: list[int]  # positions in the file list of the images in ``images``
    images: np.ndarray  # float32 (n, 3, crop, crop), normalised
    broken: list[tuple[int, str]]  # (position in the file list, reason)


def default_decode_threads() -> int:
    return max(1, min(MAX_DECODE_THREADS, os.cpu_count() or 1))


def load_normalized(path: str, pre: Preprocess) -> np.ndarray:
    """Decode, resize and centre-crop exactly as eval does, then normalise: float32 (3, crop, crop)."""
    return normalize_batch(eval_image(load_rgb(path), pre), pre.mean, pre.std)


def _decode(path: str, pre: Preprocess) -> np.ndarray | str:
    """The image, or the reason it could not be read (a string: a broken file is not an error)."""
    try:
        return load_normalized(path, pre)
    except UnreadableImage as exc:
        return exc.reason
    except OSError as exc:  # unreadable file: permissions, vanished, is a directory
        return f"{type(exc).__name__}: {exc.strerror or exc}"


def _collect(start: int, futures: list[Future], crop: int) -> Batch:
    indices, images, broken = [], [], []
    for offset, future in enumerate(futures):
        result = future.result()
        if isinstance(result, str):
            broken.append((start + offset, result))
        else:
            indices.append(start + offset)
            images.append(result)
    stacked = np.stack(images) if images else np.empty((0, 3, crop, crop), np.float32)
    return Batch(indices, stacked, broken)


def iter_batches(
    files: Sequence[str], pre: Preprocess, batch_size: int, num_threads: int | None = None
) -> Iterator[Batch]:
    """Batches of ``batch_size`` consecutive files (fewer if some are broken), in order."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    threads = num_threads or default_decode_threads()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        pending: deque[tuple[int, list[Future]]] = deque()
        next_start = 0

        def submit_next() -> None:
            nonlocal next_start
            chunk = files[next_start:next_start + batch_size]
            pending.append((next_start, [pool.submit(_decode, f, pre) for f in chunk]))
            next_start += len(chunk)

        while next_start < len(files) and len(pending) < PREFETCH_BATCHES + 1:
            submit_next()
        while pending:
            start, futures = pending.popleft()
            if next_start < len(files):
                submit_next()
            yield _collect(start, futures, pre.crop)
