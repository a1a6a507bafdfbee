"""RMSpropTF against a NumPy reference, parameter groups, and state_dict round trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from src.config import load_config
from src.training.optimizer import RMSpropTF, param_groups
from src.training.trainer import optimizer_from_config

ALPHA, EPS, MOMENTUM, WD = 0.9, 1e-3, 0.9, 0.01
LRS = [0.1, 0.1, 0.05, 0.05, 0.2]  # the LR changes mid-run


def numpy_rmsprop_tf(param: np.ndarray, grads: list[np.ndarray], lrs: list[float]) -> np.ndarray:
    """The TF update written out: ms from ones, eps inside the sqrt, lr folded into momentum."""
    ms, buf = np.ones_like(param), np.zeros_like(param)
    for grad, lr in zip(grads, lrs):
        grad = grad + WD * param
        ms = ALPHA * ms + (1 - ALPHA) * grad * grad
        buf = MOMENTUM * buf + lr * grad / np.sqrt(ms + EPS)
        param = param - buf
    return param


def test_first_step_hand_value() -> None:
    param = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = RMSpropTF([param], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    param.grad = torch.tensor([0.5], dtype=torch.float64)
    opt.step()
    # ms = 0.9 * 1 + 0.1 * 0.25 = 0.925; p = 1 - 0.1 * 0.5 / sqrt(0.926)
    assert param.item() == pytest.approx(0.9480405541092034, abs=1e-15)


@pytest.mark.parametrize("foreach", [True, False])
def test_matches_numpy_reference_with_lr_change(foreach: bool) -> None:
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    grads = [[rng.normal(size=p.shape) for _ in LRS] for p in start]
    params = [nn.Parameter(torch.tensor(p)) for p in start]
    opt = RMSpropTF(params, lr=LRS[0], alpha=ALPHA, eps=EPS, momentum=MOMENTUM, weight_decay=WD, foreach=foreach)
    for step, lr in enumerate(LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        for param, param_grads in zip(params, grads):
            param.grad = torch.tensor(param_grads[step])
        opt.step()
    for param, initial, param_grads in zip(params, start, grads):
        np.testing.assert_allclose(param.detach().numpy(), numpy_rmsprop_tf(initial, param_grads, LRS),
                                   rtol=1e-12, atol=1e-14)


def test_foreach_handles_mixed_dtypes_and_missing_grads() -> None:
    torch.manual_seed(0)
    def make() -> list[nn.Parameter]:
        torch.manual_seed(1)
        return [nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(3, dtype=torch.float64)),
                nn.Parameter(torch.randn(2))]
    results = []
    for foreach in (True, False):
        params = make()
        opt = RMSpropTF(params, lr=0.05, weight_decay=WD, foreach=foreach)
        for step in range(3):
            params[0].grad = torch.full((4,), 0.1 * (step + 1))
            params[1].grad = torch.full((3,), -0.2, dtype=torch.float64)
            opt.step()  # params[2] never has a gradient
        results.append([p.detach().clone() for p in params])
        assert len(opt.state) == 2
    for fast, slow in zip(*results):
        assert torch.equal(fast, slow)
    assert torch.equal(results[0][2], make()[2])


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 2 * 2, 2))


def test_param_groups_no_decay_on_bn_and_bias_and_skip_frozen() -> None:
    model = small_model()
    conv, bn, _, fc = model
    groups = param_groups(model, 1e-5)
    assert [(g["name"], g["weight_decay"]) for g in groups] == [("decay", 1e-5), ("no_decay", 0.0)]
    assert [id(p) for p in groups[0]["params"]] == [id(conv.weight), id(fc.weight)]
    assert [id(p) for p in groups[1]["params"]] == [id(conv.bias), id(bn.weight), id(bn.bias), id(fc.bias)]
    conv.requires_grad_(False)
    groups = param_groups(model, 1e-5)
    assert [len(g["params"]) for g in groups] == [1, 3]
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, 1e-5)


def test_build_optimizer_from_config() -> None:
    model = small_model()
    rms = optimizer_from_config(model, load_config(["--weight_decay", "0.001"]), lr=0.02)
    assert isinstance(rms, RMSpropTF)
    assert [(g["lr"], g["alpha"], g["eps"], g["momentum"], g["weight_decay"]) for g in rms.param_groups] == [
        (0.02, 0.9, 0.001, 0.9, 0.001), (0.02, 0.9, 0.001, 0.9, 0.0)]
    sgd = optimizer_from_config(model, load_config(["--opt", "sgd", "--momentum", "0.8"]), lr=0.1)
    assert isinstance(sgd, torch.optim.SGD)
    assert [(g["momentum"], g["nesterov"], g["weight_decay"]) for g in sgd.param_groups] == [
        (0.8, True, 1e-5), (0.8, True, 0.0)]
    adamw = optimizer_from_config(model, load_config(["--opt", "adamw", "--opt_eps", "1e-8", "--weight_decay", "0.05"]),
                            lr=1e-3)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [(g["eps"], g["weight_decay"]) for g in adamw.param_groups] == [(1e-8, 0.05), (1e-8, 0.0)]


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor]) -> None:
    for x in batches:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def test_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(3)
    batches = [torch.randn(2, 3, 4, 4) for _ in range(5)]
    cfg = load_config(["--weight_decay", "0.01"])
    model = small_model()
    opt = optimizer_from_config(model, cfg, lr=0.01)
    _train_steps(model, opt, batches[:3])

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = small_model()
    resumed.load_state_dict(saved["model"])
    resumed_opt = optimizer_from_config(resumed, cfg, lr=0.01)
    resumed_opt.load_state_dict(saved["optimizer"])

    _train_steps(model, opt, batches[3:])
    _train_steps(resumed, resumed_opt, batches[3:])
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    first = next(iter(resumed_opt.state.values()))
    assert first["step"] == 5 and first["square_avg"].min() < 1.0


@pytest.mark.parametrize("kwargs,message", [(dict(lr=-1), "invalid learning rate"), (dict(alpha=1.0), "invalid alpha"),
                                            (dict(eps=0), "invalid eps"), (dict(weight_decay=-1), "invalid weight")])
def test_constructor_rejects_bad_hyperparameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RMSpropTF([nn.Parameter(torch.zeros(1))], **kwargs)
