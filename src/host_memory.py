"""Keep freed host memory for reuse: glibc's defaults make PyTorch on the CPU page-fault every step.

glibc's malloc serves large blocks (a training step's activations are tens of MB each) with a
fresh ``mmap()`` and gives them back to the kernel on ``free()``; the next step asks again, and
the kernel zero-fills every page on first touch. On CPU training and inference that is a large
share of the time (B0, 224 px, 2 cores: train.py 15.7 -> 19.9 images/s, channels_last inference
at batch 32 58.5 -> 107.2 images/s, for 5-20% more peak RSS; README, Performance). jemalloc and tcmalloc avoid it by
keeping freed memory, which is why Intel's PyTorch launch scripts preload them; this does the
same with glibc's own switches (``mallopt``, what ``MALLOC_MMAP_MAX_=0`` and
``MALLOC_TRIM_THRESHOLD_`` set), so nothing needs installing.

GPU runs allocate through CUDA's caching allocator and gain nothing; train.py and eval.py call
this only for CPU runs. ``EFFNET_MALLOC=default`` keeps glibc's behaviour.
"""
from __future__ import annotations

import ctypes
import os

OPT_OUT_ENV = "EFFNET_MALLOC"
OPT_OUT_VALUE = "default"
# mallopt() parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_NEVER = 2**31 - 1  # the largest int: the heap's top is never given back
# Allocator settings a user already chose through the environment are left alone.
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def reuse_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed ones; True when the setting took effect.

    False without glibc (macOS, musl, Windows), when ``EFFNET_MALLOC=default``, or when the
    environment already configures the allocator. Safe to call more than once.
    """
    if os.environ.get(OPT_OUT_ENV, "").lower() == OPT_OUT_VALUE:
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # mallopt returns 1 on success; no mmap'd blocks, and a heap that is never trimmed.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_NEVER))
