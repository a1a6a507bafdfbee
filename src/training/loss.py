"""Classification losses: the ModelZoo smoothed cross-entropy, or plain cross-entropy."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from src.config import ConfigError


def max_smooth_factor(num_classes: int) -> float:
    """(C - 1) / C: the uniform target; beyond it the true class would weigh less than the others."""
    return (num_classes - 1) / num_classes


class SmoothedCrossEntropy(nn.Module):
    """Cross-entropy against a smoothed one-hot target: on = 1 - eps, off = eps / (C - 1).

    This is the ModelZoo's CrossEntropySmooth: eps spread over the *other* classes. torch's
    ``label_smoothing=s`` spreads s / C over all classes, true one included, so s = eps * C / (C - 1)
    gives the same targets. Targets may be class indices (N,) or probability rows (N, C) from
    mixup/cutmix; torch smooths both the same affine way (t * (1 - s) + s / C).
    """

    def __init__(self, num_classes: int, smooth_factor: float = 0.1) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"label smoothing needs at least 2 classes, got {num_classes}")
        if not 0.0 <= smooth_factor <= max_smooth_factor(num_classes):
            raise ValueError(f"smooth_factor must be in [0, (C - 1) / C] = [0, {max_smooth_factor(num_classes):g}] "
                             f"for {num_classes} classes, got {smooth_factor}")
        self.num_classes = num_classes
        self.smooth_factor = smooth_factor
        self.on_value = 1.0 - smooth_factor
        self.off_value = smooth_factor / (num_classes - 1)
        self.torch_smoothing = smooth_factor * num_classes / (num_classes - 1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits of shape (N, {self.num_classes}), got {tuple(logits.shape)}")
        # At least float32 (fp16/bf16 logits under autocast would lose precision in log_softmax).
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if target.ndim == 1:
            target = target.long()
        elif target.shape == logits.shape:
            target = target.to(logits.dtype)
        else:
            raise ValueError(f"target must be class indices (N,) or probabilities (N, C); got {tuple(target.shape)}")
        return F.cross_entropy(logits, target, label_smoothing=self.torch_smoothing)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, smooth_factor={self.smooth_factor}"


def build_loss(num_classes: int, label_smoothing: float = 0.0) -> nn.Module:
    """SmoothedCrossEntropy when ``label_smoothing`` > 0, else nn.CrossEntropyLoss.

    Both accept class indices or (N, C) probability targets. A factor above (C - 1) / C would make
    the true class weigh less than the others: ConfigError names the key to lower.
    """
    if label_smoothing <= 0:
        return nn.CrossEntropyLoss()
    if label_smoothing > max_smooth_factor(num_classes):
        raise ConfigError(f"label_smooth_factor {label_smoothing} is above (C - 1) / C = "
                          f"{max_smooth_factor(num_classes):g} for {num_classes} classes (the true class would weigh "
                          f"less than the others); use at most that")
    return SmoothedCrossEntropy(num_classes, label_smoothing)
