"""src/host_memory.py: after reuse_freed_memory() a large tensor comes from the heap, not a fresh mmap.

Each case runs in a child process: the setting is process-wide and one-way.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK_MB = 64
# Allocates and frees a 64 MB tensor twice, reading glibc's counters while each is alive:
# hblkhd = bytes held in mmap'd blocks; arena = bytes in the heap.
CHILD = f"""
import ctypes, json, torch
from src.host_memory import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
took = reuse_freed_memory()
seen = []
for _ in range(2):
    block = torch.ones({BLOCK_MB} * 2**20 // 4)
    info = libc.mallinfo2()
    seen.append(dict(mmapped=info.hblkhd, heap=info.arena))
    del block
after = libc.mallinfo2()
print(json.dumps(dict(took=took, seen=seen, heap_after_free=after.arena)))
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")


def _run(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("EFFNET_MALLOC", "GLIBC_TUNABLES")}
    env.update(env_extra, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_large_blocks_come_from_the_heap_and_stay_there():
    result = _run({})
    assert result["took"] is True
    block = BLOCK_MB * 2**20
    for alive in result["seen"]:
        assert alive["mmapped"] < block and alive["heap"] >= block
    assert result["heap_after_free"] >= block  # kept for the next step instead of returned


def test_glibc_defaults_mmap_large_blocks_and_the_opt_out_keeps_them():
    for env in ({"EFFNET_MALLOC": "default"}, {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}):
        result = _run(env)
        assert result["took"] is False
        for alive in result["seen"]:
            assert alive["mmapped"] >= BLOCK_MB * 2**20  # a fresh mapping, zero-filled page by page
