"""Optimizers: TensorFlow-style RMSProp (the EfficientNet recipe) and the param-group split.

torch.optim.RMSprop differs from TensorFlow's in three ways that matter for reproducing the
EfficientNet recipes (lr 0.016 per 256 images with eps 1e-3): TF adds eps *inside* the square root,
starts the mean-square buffer at ones (so the first steps are small instead of ~lr/sqrt(eps)), and
folds the learning rate into the momentum buffer (so an LR change affects new gradients only).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

DEFAULT_ALPHA = 0.9  # TF RMSProp "decay"
DEFAULT_EPS = 1e-3
DEFAULT_MOMENTUM = 0.9
ADAMW_BETAS = (0.9, 0.999)


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp with TensorFlow semantics.

    Per step, with g = grad + weight_decay * p (L2, as the ModelZoo applies it):
        ms  = alpha * ms + (1 - alpha) * g^2          (ms starts at ones)
        buf = momentum * buf + lr * g / sqrt(ms + eps)
        p  -= buf
    ``foreach=True`` (default) updates all tensors of a device/dtype with multi-tensor kernels;
    ``foreach=False`` is the plain per-tensor loop, kept as the readable reference.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.01, alpha: float = DEFAULT_ALPHA,
                 eps: float = DEFAULT_EPS, momentum: float = DEFAULT_MOMENTUM, weight_decay: float = 0.0,
                 foreach: bool | None = None) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"invalid alpha {alpha}; need 0 <= alpha < 1")
        if eps <= 0:
            raise ValueError(f"invalid eps {eps}; need eps > 0")
        if momentum < 0:
            raise ValueError(f"invalid momentum {momentum}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        defaults = dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)

    def _init_state(self, group: dict[str, Any]) -> tuple[list, list, list, list]:
        params, grads, square_avgs, momentum_bufs = [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("RMSpropTF does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            square_avgs.append(state["square_avg"])
            momentum_bufs.append(state["momentum_buffer"])
        return params, grads, square_avgs, momentum_bufs

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            tensors = self._init_state(group)
            if not tensors[0]:
                continue
            update = _single_tensor_update if group["foreach"] is False else _multi_tensor_update
            update(*tensors, lr=group["lr"], alpha=group["alpha"], eps=group["eps"],
                   momentum=group["momentum"], weight_decay=group["weight_decay"])
        return loss


def _single_tensor_update(params: list[torch.Tensor], grads: list[torch.Tensor], square_avgs: list[torch.Tensor],
                          momentum_bufs: list[torch.Tensor], *, lr: float, alpha: float, eps: float,
                          momentum: float, weight_decay: float) -> None:
    for p, grad, square_avg, buf in zip(params, grads, square_avgs, momentum_bufs):
        if weight_decay != 0:
            grad = grad.add(p, alpha=weight_decay)
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        denom = square_avg.add(eps).sqrt_()
        buf.mul_(momentum).addcdiv_(grad, denom, value=lr)
        p.sub_(buf)


def _multi_tensor_update(params: list[torch.Tensor], grads: list[torch.Tensor], square_avgs: list[torch.Tensor],
                         momentum_bufs: list[torch.Tensor], *, lr: float, alpha: float, eps: float,
                         momentum: float, weight_decay: float) -> None:
    for key in _group_by_device_dtype(params):
        idx = [i for i, p in enumerate(params) if (p.device, p.dtype) == key]
        ps, gs = [params[i] for i in idx], [grads[i] for i in idx]
        sqs, bufs = [square_avgs[i] for i in idx], [momentum_bufs[i] for i in idx]
        if weight_decay != 0:
            gs = torch._foreach_add(gs, ps, alpha=weight_decay)
        torch._foreach_mul_(sqs, alpha)
        torch._foreach_addcmul_(sqs, gs, gs, value=1 - alpha)
        denom = torch._foreach_add(sqs, eps)
        torch._foreach_sqrt_(denom)
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_addcdiv_(bufs, gs, denom, value=lr)
        torch._foreach_sub_(ps, bufs)


def _group_by_device_dtype(params: list[torch.Tensor]) -> list[tuple[torch.device, torch.dtype]]:
    """Multi-tensor kernels need one device and dtype per call; keep first-seen order."""
    keys: list[tuple[torch.device, torch.dtype]] = []
    for p in params:
        if (p.device, p.dtype) not in keys:
            keys.append((p.device, p.dtype))
    return keys


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters: weight decay on conv/linear weights, none on BN params and biases.

    Decaying BN scales and biases only shrinks them toward zero without regularising capacity
    (the ModelZoo recipe excludes them too). Frozen parameters are left out entirely.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    return groups


def build_optimizer(model: nn.Module, opt: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    eps: float = DEFAULT_EPS, alpha: float = DEFAULT_ALPHA, nesterov: bool = False
                    ) -> torch.optim.Optimizer:
    """Optimizer ``opt`` (rmsprop: TF-style RMSpropTF; sgd; adamw) over the decay / no-decay groups,
    starting at ``lr``. ``alpha`` is RMSProp's mean-square decay, ``nesterov`` SGD's."""
    groups = param_groups(model, weight_decay)
    if opt == "rmsprop":
        return RMSpropTF(groups, lr=lr, alpha=alpha, eps=eps, momentum=momentum)
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=ADAMW_BETAS, eps=eps)
    raise ValueError(f"opt {opt!r} is not one of rmsprop, sgd, adamw")
