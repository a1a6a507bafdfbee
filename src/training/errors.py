"""How a training run can end badly: input it cannot use (exit 2), or a run that started and stopped."""
from __future__ import annotations

from src.common.errors import InputError


class TrainInputError(InputError):
    """The data, config or checkpoint cannot give a valid run; the message says what to change."""


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf for ``max_nonfinite_steps`` consecutive steps."""


class TrainOutOfMemory(RuntimeError):
    """CUDA ran out of memory; the message names the remedies and the intact checkpoint."""


class ProcessTimeout(RuntimeError):
    """A collective waited dist_timeout for a process that stopped answering; the message names it."""
