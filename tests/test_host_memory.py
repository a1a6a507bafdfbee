"""src/runtime/host_memory.py: off unless EFFNET_MALLOC=tuned; then glibc's two switches, or the allocator left alone.

What the project controls is which ``mallopt`` calls it makes and when it declines; how glibc then
places blocks (heap or mmap) is glibc's business and differs under jemalloc or tcmalloc, so it is
not asserted here. A fake libc records the calls; one child process makes the real call (the
setting is process-wide and one-way), whatever allocator is preloaded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.runtime import host_memory
from src.runtime.host_memory import (M_MMAP_MAX, M_TRIM_THRESHOLD, TRIM_NEVER, USER_SETTINGS, reuse_freed_memory,
                              reuse_freed_memory_if_requested)

REPO = Path(__file__).resolve().parents[1]


class FakeLibc:
    """Records mallopt(param, value) calls; answers ``result`` (glibc: 1 = done, 0 = refused)."""

    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


@pytest.fixture
def clean_env(monkeypatch):
    """No allocator setting from the environment running the tests."""
    for name in (host_memory.ENV_VAR, *USER_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _use_libc(monkeypatch, libc) -> None:
    def load(name):
        assert name == "libc.so.6"
        if isinstance(libc, Exception):
            raise libc
        return libc

    monkeypatch.setattr(host_memory.ctypes, "CDLL", load)


def test_no_mmap_for_large_blocks_and_a_heap_never_trimmed(clean_env):
    libc = FakeLibc()
    _use_libc(clean_env, libc)
    assert reuse_freed_memory() is True
    assert libc.calls == [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_NEVER)]
    assert (M_MMAP_MAX, M_TRIM_THRESHOLD, TRIM_NEVER) == (-4, -1, 2**31 - 1)  # glibc's <malloc.h>, INT_MAX


@pytest.mark.parametrize("value, expected_calls", [(None, []), ("", []), ("default", []), ("reuse", []),
                                                    ("tuned", [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_NEVER)]),
                                                    (" Tuned ", [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_NEVER)])])
def test_programs_change_the_allocator_only_with_effnet_malloc_tuned(clean_env, value, expected_calls):
    libc = FakeLibc()
    _use_libc(clean_env, libc)
    if value is not None:
        clean_env.setenv(host_memory.ENV_VAR, value)
    assert reuse_freed_memory_if_requested() is bool(expected_calls)
    assert libc.calls == expected_calls


@pytest.mark.parametrize("name", USER_SETTINGS)
def test_a_users_allocator_setting_leaves_the_allocator_alone(clean_env, name):
    libc = FakeLibc()
    _use_libc(clean_env, libc)
    clean_env.setenv(host_memory.ENV_VAR, "tuned")
    clean_env.setenv(name, "0")
    assert reuse_freed_memory_if_requested() is False and reuse_freed_memory() is False
    assert libc.calls == []


@pytest.mark.parametrize("libc", [OSError("libc.so.6: cannot open shared object file"), object()],
                         ids=["no glibc", "no mallopt"])
def test_without_glibcs_mallopt_it_declines(clean_env, libc):
    _use_libc(clean_env, libc)
    assert reuse_freed_memory() is False


def test_a_refused_setting_is_reported(clean_env):
    libc = FakeLibc(result=0)
    _use_libc(clean_env, libc)
    assert reuse_freed_memory() is False


CHILD = """
import json
from src.runtime.host_memory import reuse_freed_memory_if_requested
print(json.dumps([reuse_freed_memory_if_requested(), reuse_freed_memory_if_requested()]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_the_real_call_in_a_fresh_process():
    """The real libc takes both settings (twice: it is safe to repeat), also with jemalloc or
    tcmalloc preloaded (LD_PRELOAD is passed through); without EFFNET_MALLOC=tuned it declines."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("no glibc (musl or another libc)")
    env = {k: v for k, v in os.environ.items() if k != host_memory.ENV_VAR and k not in USER_SETTINGS}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for extra, expected in (({host_memory.ENV_VAR: "tuned"}, [True, True]), ({}, [False, False])):
        proc = subprocess.run([sys.executable, "-c", CHILD], env={**env, **extra}, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected
