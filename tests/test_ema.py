"""Tests for src/training/ema.py: the warmup formula by hand, buffers, wrappers and resume."""

import pytest
import torch
from torch import nn

from src.models.files import atomic_save, read_file
from src.training.ema import ModelEma


def tiny_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        model[0].bias.fill_(0.5)
    return model


def set_step_values(model: nn.Sequential, k: int) -> None:
    """Give every tensor a known value for update k."""
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[k + 2.0, -3.0 * k]]))
        model[0].bias.fill_(0.25 * k)
        model[1].running_mean.fill_(k + 1.0)
        model[1].num_batches_tracked.fill_(10 + k)


def test_update_matches_hand_computation_with_warmup():
    model = tiny_model()
    ema = ModelEma(model, decay=0.9999)
    expected = {"w": [1.0, 2.0], "b": 0.5, "rm": 0.0}
    for k in range(3):
        set_step_values(model, k)
        d = (1 + k) / (10 + k)  # 0.1, 2/11, 0.25: warmup is below 0.9999
        assert ema.update(model) == pytest.approx(d)
        expected["w"] = [d * e + (1 - d) * p for e, p in zip(expected["w"], [k + 2.0, -3.0 * k])]
        expected["b"] = d * expected["b"] + (1 - d) * 0.25 * k
        expected["rm"] = d * expected["rm"] + (1 - d) * (k + 1.0)
    assert ema.module[0].weight.flatten().tolist() == pytest.approx(expected["w"], abs=1e-6)
    assert ema.module[0].bias.item() == pytest.approx(expected["b"], abs=1e-6)
    assert ema.module[1].running_mean.item() == pytest.approx(expected["rm"], abs=1e-6)
    assert ema.module[1].running_var.item() == pytest.approx(1.0)
    assert ema.module[1].num_batches_tracked.item() == 12  # copied, not averaged
    assert ema.module[1].num_batches_tracked.dtype == torch.int64
    assert ema.updates == 3


def test_decay_cap_and_no_warmup():
    model = tiny_model()
    assert ModelEma(model, decay=0.5).decay_at(100) == 0.5
    assert ModelEma(model, decay=0.9).decay_at(0) == pytest.approx(0.1)
    no_warmup = ModelEma(model, decay=0.9, warmup=False)
    assert no_warmup.decay_at(0) == 0.9
    set_step_values(model, 1)
    no_warmup.update(model, step=0)
    assert no_warmup.module[0].bias.item() == pytest.approx(0.9 * 0.5 + 0.1 * 0.25)
    with pytest.raises(ValueError, match="decay must be in"):
        ModelEma(model, decay=1.0)


def test_copy_is_independent_frozen_and_in_eval_mode():
    model = tiny_model().train()
    ema = ModelEma(model, decay=0.99)
    with torch.no_grad():
        model[0].weight.fill_(9.0)
    assert ema.module[0].weight.flatten().tolist() == [1.0, 2.0]
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_bn_buffers_from_a_real_forward():
    torch.manual_seed(0)
    model = tiny_model().train()
    ema = ModelEma(model, decay=0.9999)
    model(torch.randn(8, 2))
    ema.update(model, step=0)
    assert ema.module[1].running_mean.item() == pytest.approx(0.9 * model[1].running_mean.item(), abs=1e-6)
    assert ema.module[1].num_batches_tracked.item() == 1


@pytest.mark.parametrize("wrap", [nn.DataParallel, torch.compile])
def test_wrapped_models_are_unwrapped(wrap):
    model = tiny_model()
    wrapped = wrap(model)
    ema = ModelEma(wrapped, decay=0.9999)
    assert type(ema.module) is nn.Sequential
    assert "0.weight" in ema.module.state_dict()
    set_step_values(model, 1)
    ema.update(wrapped, step=0)
    assert ema.module[0].bias.item() == pytest.approx(0.1 * 0.5 + 0.9 * 0.25, abs=1e-6)


def test_resume_round_trip(tmp_path):
    model = tiny_model()
    ema = ModelEma(model, decay=0.9999)
    for k in range(3):
        set_step_values(model, k)
        ema.update(model)
    path = atomic_save({"ema": ema.state_dict()}, tmp_path / "ema.pth")
    resumed = ModelEma(tiny_model(), decay=0.9999)
    resumed.load_state_dict(read_file(path)["ema"])
    assert resumed.updates == 3
    set_step_values(model, 3)
    assert ema.update(model) == resumed.update(model) == pytest.approx(4 / 13)
    for (name, a), b in zip(ema.module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.equal(a, b), name
