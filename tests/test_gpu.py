"""The GPU paths themselves, run where CUDA exists (skipped elsewhere; scripts/gpu_check.sh is the
fuller acceptance run): fp16 with GradScaler and bf16 training steps in channels_last."""
from __future__ import annotations

import pytest
import torch

from src.runtime.amp import autocast, build_scaler
from src.models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_training_steps_move_the_weights_on_the_gpu(amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model("efficientnet_b0", num_classes=10).to(device, memory_format=torch.channels_last).train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = build_scaler(amp, 0.0, device)
    x = torch.randn(8, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device=device)
    applied = 0
    for _ in range(3):
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.backward(loss)
        applied += scaler.step(optimizer).applied
        optimizer.zero_grad(set_to_none=True)
    assert applied >= 1
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert all(moved) and all(torch.isfinite(p).all() for p in model.parameters())
