"""Mixed precision for the training step: autocast and the three ways of scaling the loss.

* ``--amp bf16``: autocast to bfloat16 (CPU and recent GPUs); bf16 has fp32's exponent range,
  so no loss scaling is needed; a step whose gradients are not finite is skipped (as in fp32).
* ``--amp fp16`` with ``loss_scale 0``: torch's dynamic GradScaler (halve the scale and skip
  the step on overflow, grow it after a run of good steps).
* ``--amp fp16`` with ``loss_scale S > 0``: the ModelZoo's static scale -- multiply the loss
  by S, divide the gradients by S, and skip the step when they are not finite.

Every scaler has the same small interface (``backward``, ``unscale_``, ``step``, ``state_dict``)
so the training loop has one code path; ``step`` also adapts the scale and says whether the
optimizer step was applied, and whether a stop was requested: the step's flags (the loss was not
finite, a stop signal arrived; already agreed across ranks) are read on the host together with the
gradient check, in the one read the step needs anyway.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """torch.autocast for ``amp`` on ``device``'s type, or a no-op for 'none'."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class StepOutcome(NamedTuple):
    applied: bool  # the optimizer step was taken
    stop: bool  # a stop was requested (on any rank)


def read_flags(optimizer: torch.optim.Optimizer | None, flags: torch.Tensor | None) -> tuple[bool, bool]:
    """(skip, stop) in one host read: skip when a gradient the optimizer would apply is inf/NaN (not
    checked without ``optimizer``) or flags[0] (the loss was NaN/inf) is set; stop when flags[1] is."""
    checks = []
    if optimizer is not None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            checks.append(~torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(grads)])).all())
    if flags is not None:
        checks.append(flags[0] != 0)
    skip = torch.stack(checks).any() if checks else torch.zeros((), dtype=torch.bool)
    stop = (flags[1] != 0) if flags is not None and flags.numel() > 1 else torch.zeros((), dtype=torch.bool)
    both = torch.stack([skip.to(stop.device), stop]).tolist()
    return bool(both[0]), bool(both[1])


class NoScaler:
    """fp32 or bf16: backward as is; a step is skipped only if gradients are not finite."""

    kind = "none"

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are already true gradients."""

    def step(self, optimizer: torch.optim.Optimizer, flags: torch.Tensor | None = None) -> StepOutcome:
        """Apply the optimizer step unless a gradient is inf/NaN or ``flags[0]`` (a device flag: the
        loss was NaN/inf) is set; ``flags[1]`` (a stop request) is read along.

        A finite loss can still give non-finite gradients (a bf16 overflow in backward, a bad
        custom layer); applying them would write NaN into every weight the optimizer touches.
        """
        skip, stop = read_flags(optimizer, flags)
        if not skip:
            optimizer.step()
        return StepOutcome(not skip, stop)

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Nothing to restore."""


class StaticScaler(NoScaler):
    """Loss x S, gradients / S; a step whose gradients overflowed is skipped (ModelZoo loss_scale)."""

    kind = "static"

    def __init__(self, scale: float) -> None:
        if scale <= 0:
            raise ValueError(f"static loss scale must be > 0, got {scale}")
        self.scale = float(scale)
        self._unscaled = False

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.scale).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self._unscaled:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)
        self._unscaled = True

    def step(self, optimizer: torch.optim.Optimizer, flags: torch.Tensor | None = None) -> StepOutcome:
        self.unscale_(optimizer)
        self._unscaled = False
        return super().step(optimizer, flags)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None and state.get("kind") == self.kind:
            self.scale = float(state["scale"])


class DynamicScaler(NoScaler):
    """torch.amp.GradScaler behind the common interface."""

    kind = "dynamic"

    def __init__(self, device: torch.device) -> None:
        self.scaler = torch.amp.GradScaler(device.type)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, flags: torch.Tensor | None = None) -> StepOutcome:
        """GradScaler.step + update; the scale only drops when the step was skipped for inf/NaN.
        A NaN/inf loss (``flags[0]`` set) skips the step with the scale kept, as if never taken."""
        bad_loss, stop = read_flags(None, flags)  # GradScaler takes no flag from outside: read ours first
        if bad_loss:
            self.scaler.update(new_scale=self.scaler.get_scale())  # ends the iteration (unscale_ state) unchanged
            return StepOutcome(False, stop)
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return StepOutcome(self.scaler.get_scale() >= scale_before, stop)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None and state.get("kind") == self.kind:
            self.scaler.load_state_dict({k: v for k, v in state.items() if k != "kind"})


def build_scaler(amp: str, loss_scale: float, device: torch.device) -> NoScaler:
    """The scaler for ``--amp`` / ``--loss_scale``: only fp16 needs one."""
    if amp != "fp16":
        return NoScaler()
    if loss_scale > 0:
        return StaticScaler(loss_scale)
    return DynamicScaler(device)
