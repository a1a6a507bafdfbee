"""Stop requests: SIGTERM, SIGUSR1 and SIGINT become a checkpoint at the next optimizer step, not a lost run.

Clusters ask a job to go before they take it: SLURM sends SIGTERM (or the signal of
``--signal=USR1@120``), Kubernetes and spot reclaimers SIGTERM, 30-120 s before SIGKILL; torchrun
forwards what it gets to its workers. The handlers here only record the request; the trainer folds
it into the flag it already all-reduces and reads once per step (src.training.trainer), so every
rank stops after the same step without a new synchronisation, rank 0 writes the checkpoint of that
step, and the process exits with ``EXIT_PREEMPTED`` (SIGTERM, SIGUSR1) or ``EXIT_INTERRUPTED`` (SIGINT,
a person's Ctrl-C). A second signal while the checkpoint is written changes nothing: the write is
atomic (src.models.files.atomic_save); a second Ctrl-C raises KeyboardInterrupt, as Ctrl-C does.

DataLoader workers ignore SIGINT and SIGUSR1 (``ignore_in_worker``): Ctrl-C in a terminal reaches
the whole process group and must not kill a worker under the loader the main process is about to
finish its step with. They keep SIGTERM: Python's multiprocessing ends its children with it at exit.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

from src.common.errors import EXIT_INTERRUPTED

EXIT_PREEMPTED = 128 + signal.SIGTERM  # 143: "ended on SIGTERM", what SLURM, Kubernetes and shells report
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    """The first stop signal this process received (None: none yet)."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def handle(self, signum: int, frame: Any) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (checkpoints are written atomically)
        if self.signal is None:
            self.signal = signal.Signals(signum)

    def exit_status(self) -> int:
        return EXIT_INTERRUPTED if self.signal == signal.SIGINT else EXIT_PREEMPTED

    def word(self) -> str:
        return "interrupted" if self.signal == signal.SIGINT else "preempted"


class Stopped(Exception):
    """Training stopped on a signal after writing the checkpoint of the step it had reached."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Record SIGTERM, SIGUSR1 and SIGINT for the duration (main thread only; elsewhere nothing is
    installed and no stop is ever requested); the previous handlers come back afterwards."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request.handle) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGINT and SIGUSR1 are the main process's to handle (SIGTERM stays:
    multiprocessing terminates workers with it when the process exits)."""
    for sig in (signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
