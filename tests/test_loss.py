"""Smoothed cross-entropy against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.config import ConfigError, load_config
from src.training.loss import SmoothedCrossEntropy, build_loss
from src.training.trainer import loss_from_config

LOGITS = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
# log_softmax([1, 2, 3]) = [-2.40760596, -1.40760596, -0.40760596]; eps 0.3, C 3 -> on 0.7, off 0.15.
SAMPLE0_LABEL2 = 0.15 * 2.4076059644443806 + 0.15 * 1.4076059644443804 + 0.7 * 0.4076059644443804
UNIFORM = math.log(3)  # any target on uniform logits


def test_index_targets_hand_values() -> None:
    loss_fn = SmoothedCrossEntropy(num_classes=3, smooth_factor=0.3)
    assert (loss_fn.on_value, loss_fn.off_value) == pytest.approx((0.7, 0.15))
    loss = loss_fn(LOGITS, torch.tensor([2, 0]))
    assert SAMPLE0_LABEL2 == pytest.approx(0.8576059644443803)
    assert loss.item() == pytest.approx((SAMPLE0_LABEL2 + UNIFORM) / 2, abs=1e-12)


def test_soft_targets_are_smoothed_like_mixed_one_hots() -> None:
    loss_fn = SmoothedCrossEntropy(3, 0.3)
    soft = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    logits = LOGITS[:1]
    # smoothed target = [0.425, 0.425, 0.15]
    hand = 0.425 * 2.4076059644443806 + 0.425 * 1.4076059644443804 + 0.15 * 0.4076059644443804
    assert loss_fn(logits, soft).item() == pytest.approx(hand, abs=1e-12)
    mixed = 0.5 * loss_fn(logits, torch.tensor([0])) + 0.5 * loss_fn(logits, torch.tensor([1]))
    assert loss_fn(logits, soft).item() == pytest.approx(mixed.item(), abs=1e-12)


def _explicit_smoothed_ce(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """-sum(t * log_softmax) with t built by hand: off = eps / (C - 1) everywhere, on = 1 - eps at the label."""
    classes = logits.shape[1]
    hard = F.one_hot(target, classes).to(logits.dtype) if target.ndim == 1 else target
    smoothed = hard * (1 - eps - eps / (classes - 1)) + eps / (classes - 1)
    return -(smoothed * F.log_softmax(logits, dim=1)).sum(1).mean()


@pytest.mark.parametrize("classes, eps", [(5, 0.1), (2, 0.3), (10, 0.9)])
def test_equals_explicit_modelzoo_targets_for_indices_and_probabilities(classes: int, eps: float) -> None:
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randn(6, classes, dtype=torch.float64, generator=generator) * 3
    labels = torch.randint(0, classes, (6,), generator=generator)
    mixed = torch.softmax(torch.randn(6, classes, dtype=torch.float64, generator=generator), 1)  # mixup-like rows
    loss_fn = SmoothedCrossEntropy(classes, eps)
    for target in (labels, mixed):
        assert loss_fn(logits, target).item() == pytest.approx(_explicit_smoothed_ce(logits, target, eps).item(),
                                                               abs=1e-12)
    # torch's own rule (eps / C on every class) is a different target: the rescaling is needed
    assert loss_fn(logits, labels).item() != pytest.approx(F.cross_entropy(logits, labels, label_smoothing=eps)
                                                           .item(), abs=1e-6)
    assert SmoothedCrossEntropy(classes, 0.0)(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), abs=1e-12)


def test_half_logits_give_float32_loss_and_gradients() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float16, requires_grad=True)
    loss = SmoothedCrossEntropy(3, 0.3)(logits, torch.tensor([2]))
    loss.backward()
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(SAMPLE0_LABEL2, abs=1e-3)
    softmax = torch.softmax(torch.tensor([1.0, 2.0, 3.0]), 0)
    expected_grad = softmax - torch.tensor([0.15, 0.15, 0.7])
    assert torch.allclose(logits.grad.float(), expected_grad.unsqueeze(0), atol=1e-3)


def test_float32_logits_stay_float32_under_bf16_autocast() -> None:
    logits, labels = torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 4])
    loss_fn = SmoothedCrossEntropy(5, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss_fn(logits, labels)
    assert inside.dtype == torch.float32 and torch.equal(inside, loss_fn(logits, labels))


@pytest.mark.parametrize("kwargs,message", [(dict(num_classes=1), "at least 2 classes"),
                                            (dict(num_classes=3, smooth_factor=1.0), r"smooth_factor must be in"),
                                            (dict(num_classes=2, smooth_factor=0.6), r"\[0, 0\.5\] for 2 classes")])
def test_constructor_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SmoothedCrossEntropy(**kwargs)


def test_shape_errors() -> None:
    loss_fn = SmoothedCrossEntropy(3, 0.1)
    with pytest.raises(ValueError, match=r"expected logits of shape \(N, 3\)"):
        loss_fn(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target must be class indices"):
        loss_fn(torch.zeros(2, 3), torch.zeros(2, 4))


def test_build_loss_from_config() -> None:
    smooth = loss_from_config(load_config(["--label_smooth_factor", "0.2"]), num_classes=10)
    assert isinstance(smooth, SmoothedCrossEntropy)
    assert (smooth.num_classes, smooth.smooth_factor) == (10, 0.2)
    assert type(loss_from_config(load_config(["--use_label_smooth", "false"]), 10)) is nn.CrossEntropyLoss
    assert type(build_loss(10, label_smoothing=0.0)) is nn.CrossEntropyLoss
    assert build_loss(2, label_smoothing=0.5).on_value == 0.5  # the uniform target
    with pytest.raises(ConfigError, match=r"label_smooth_factor 0.6 is above \(C - 1\) / C = 0.5 for 2 classes"):
        loss_from_config(load_config(["--label_smooth_factor", "0.6"]), 2)
