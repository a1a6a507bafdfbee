"""Opt-in (``EFFNET_MALLOC=tuned``): keep freed host memory for reuse instead of glibc's page faults.

glibc's malloc serves large blocks (a training step's activations are tens of MB each) with a
fresh ``mmap()`` and gives them back to the kernel on ``free()``; the next step asks again, and
the kernel zero-fills every page on first touch. ``reuse_freed_memory`` turns that off with
glibc's own switches (``mallopt``, what ``MALLOC_MMAP_MAX_=0`` and ``MALLOC_TRIM_THRESHOLD_``
set): large blocks come from the heap and the heap is never trimmed, which is what preloading
jemalloc or tcmalloc gives, without installing either. It changes the whole process's allocator
and is one-way, so it is off unless asked for.

Measured only on a 2-core CPU (B0, 224 px): train.py 15.7 -> 19.9 images/s, channels_last
inference at batch 32 58.5 -> 107.2 images/s, for 5-20% more peak RSS (docs/benchmarks.md). GPU
runs allocate through CUDA's caching allocator and gain nothing; train.py and eval.py apply it
only to CPU runs with ``EFFNET_MALLOC=tuned``.
"""
from __future__ import annotations

import ctypes
import os

ENV_VAR = "EFFNET_MALLOC"
TUNED = "tuned"  # EFFNET_MALLOC=tuned opts in; unset (or anything else) keeps glibc's behaviour
# mallopt() parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_NEVER = 2**31 - 1  # the largest int: the heap's top is never given back
# Allocator settings a user already chose through the environment are left alone.
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def tuning_requested() -> bool:
    """Whether the environment opts in with ``EFFNET_MALLOC=tuned`` (any case)."""
    return os.environ.get(ENV_VAR, "").strip().lower() == TUNED


def reuse_freed_memory_if_requested() -> bool:
    """``reuse_freed_memory()`` when ``EFFNET_MALLOC=tuned``, else nothing; True when the setting took effect."""
    return tuning_requested() and reuse_freed_memory()


def reuse_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed ones; True when the setting took effect.

    False without glibc (macOS, musl, Windows) or when the environment already configures the
    allocator. Safe to call more than once. Unconditional: programs call
    ``reuse_freed_memory_if_requested``.
    """
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # mallopt returns 1 on success; no mmap'd blocks, and a heap that is never trimmed.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_NEVER))
