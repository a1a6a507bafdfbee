"""Does an exported file compute what PyTorch computes? Judged against float32's own error.

The exported file and eager PyTorch both compute in float32, each with its own kernels and
summation order, so neither is "the" answer: both differ from the exact result by rounding
error, whose size depends on the network, the input and the CPU (a fixed absolute or
logit-relative tolerance passes on one machine and fails on the next). The reference here is
the same model in float64 on the same batch. PyTorch's own float32 error on that batch,
``max |torch32 - ref64|``, says how far an honest float32 implementation lands; the export is
accepted when ``max |exported - ref64| <= k * max(that error, floor)``.

Both sides are maxima over the whole batch, not element by element: rounding errors of two
implementations are independent, and among thousands of logits (1000 classes x a few images)
some land where PyTorch happened to round luckily. Element by element, an honest onnxruntime
file of a 1000-class B0 was 89x PyTorch's error at its worst logit; batch maxima 0.9x.

The batch is a few synthetic photos (smooth shading, soft blobs, hard edges, texture, drawn
from a fixed seed) through the variant's own eval preprocessing: activations like those of real
images, not the uniform noise a network never sees (noise drives BatchNorm-calibrated channels
far outside their range and inflates some errors while hiding others).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from src.common.preprocess import Preprocess, eval_image, normalize_batch

# k: how many times PyTorch's own float32 error the export may be off by. Two honest float32
# implementations differ from float64 by errors of the same order (summation order, BatchNorm
# folded into the weights in float32, onnxruntime's approximate sigmoid): onnxruntime 1.31 vs
# torch 2.14 on an AMD EPYC measured 0.3x-3.9x (B0, B3, V2-S; 32-224 px; 5-1000 classes; fp16
# 0.7x-1.5x). 10 leaves room for other CPUs' kernels; a real fault (a wrong weight, op or padding)
# is off by orders of magnitude more. export.py --check_tolerance overrides it.
DEFAULT_CHECK_TOLERANCE = 10.0
# The floor: float32 resolves eps = 2**-23 relative (float16: 2**-10), so no computation of a
# logit z = sum_j w_j f_j + b can promise better than eps * (sum_j |w_j f_j| + |b|) (the sum of
# |terms| of the classifier's dot product; a cancellation makes it far larger than |z|). It keeps
# the bound honest when PyTorch happens to land very close to float64 on a batch (a shallow
# network, or a lucky one).
FLOAT32_EPS = float(np.finfo(np.float32).eps)
FLOAT16_EPS = float(np.finfo(np.float16).eps)
VERIFY_IMAGE_SEED = 0


class CheckFailed(ValueError):
    """The exported file's outputs are further from float64 than float32 arithmetic explains."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def synthetic_photo(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic photo-like RGB image: a lit colour gradient, soft blobs, a few hard-edged
    shapes (object borders), band-limited texture and sensor-like noise. Not a real photo, but
    with a photo's mix of flat regions, edges and fine detail at every scale."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / width, y / height
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    tilt = rng.uniform(-80, 80, size=(2, 3)).astype(np.float32)
    img = base + u[..., None] * tilt[0] + v[..., None] * tilt[1]
    for _ in range(6):  # soft blobs: out-of-focus objects, sky, foliage
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        blob = np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-90, 90, size=3).astype(np.float32)
    for _ in range(3):  # hard-edged discs and boxes: object borders
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        mask = ((u - cx) ** 2 + (v - cy) ** 2 < r * r) if rng.uniform() < 0.5 else \
            ((np.abs(u - cx) < r) & (np.abs(v - cy) < r * rng.uniform(0.3, 1.0)))
        img[mask] = img[mask] * 0.4 + rng.uniform(0, 255, size=3).astype(np.float32) * 0.6
    coarse = rng.normal(0, 1, size=(max(2, height // 8), max(2, width // 8), 3)).astype(np.float32)
    texture = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((width, height), Image.BICUBIC))
                        for c in range(3)], axis=-1)
    img += 12 * texture + rng.normal(0, 3, size=img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB")


def verification_batch(pre: Preprocess, count: int, seed: int = VERIFY_IMAGE_SEED) -> torch.Tensor:
    """``count`` synthetic photos (4:3, landscape and portrait, larger than ``pre.resize``) through
    ``pre``: resize, centre crop, normalise; float32 NCHW as the exported file is fed."""
    side = pre.resize * 5 // 4 + 1
    images = []
    for i in range(count):
        width, height = (side * 4 // 3, side) if i % 2 == 0 else (side, side * 4 // 3)
        images.append(eval_image(synthetic_photo(width, height, seed + i), pre))
    return torch.from_numpy(normalize_batch(np.stack(images), pre.mean, pre.std))


# --------------------------------------------------------------------------------------------
# The reference and the rule
# --------------------------------------------------------------------------------------------
@dataclass
class Reference:
    """PyTorch on one batch: float64 outputs, its own float32 (or float16) error, and the floor."""

    ref64: np.ndarray
    own_error: float  # max |PyTorch in the export's precision - float64|
    floor: float  # eps * the largest sum of |terms| of a logit
    precision: str  # "fp32" or "fp16"

    def allowed(self, k: float) -> float:
        return k * max(self.own_error, self.floor)


def _sum_of_abs_terms(model: nn.Module, x: torch.Tensor) -> float:
    """max over the batch of sum_j |w_ij f_j| + |b_i| for the last nn.Linear (float64 model);
    max |output| when the model ends in something else."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        with torch.inference_mode():
            return float(model(x).abs().max())
    head = linears[-1]
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    with torch.inference_mode():
        try:
            model(x)
        finally:
            handle.remove()
        features = captured[0].flatten(1)
        terms = features.abs() @ head.weight.abs().T
        if head.bias is not None:
            terms = terms + head.bias.abs()
        return float(terms.max())


def float64_reference(model: nn.Module, x: torch.Tensor, fp16: bool = False) -> Reference:
    """Run ``model`` (eval, float32) on ``x`` in float64 (a deep copy) and in the export's
    precision; the float64 result is the reference, the other's distance from it the yardstick."""
    exact = copy.deepcopy(model).double().eval()
    x64 = x.double()
    with torch.inference_mode():
        ref64 = exact(x64).numpy()
        if fp16:
            low = copy.deepcopy(model).half().eval()
            own = low(x.half()).double().numpy()
        else:
            own = model(x).double().numpy()
    own_error = float(np.abs(own - ref64).max())
    eps = FLOAT16_EPS if fp16 else FLOAT32_EPS
    floor = eps * _sum_of_abs_terms(exact, x64)
    return Reference(ref64, own_error, floor, "fp16" if fp16 else "fp32")


@dataclass
class CheckResult:
    images: int
    max_abs_diff: float  # max |exported - float64|
    own_error: float  # max |PyTorch - float64| in the same precision
    floor: float
    allowed: float
    tolerance: float  # k
    precision: str

    def describe(self, what: str) -> str:
        """One line for the export log: the measured difference, float's own error, the bound."""
        return (f"{what} vs PyTorch float64 on {self.images} synthetic photos: max abs diff "
                f"{self.max_abs_diff:.3g}, PyTorch {self.precision}'s own error {self.own_error:.3g}, allowed "
                f"{self.allowed:.3g} ({self.tolerance:g} x max(own error, floor {self.floor:.3g}))")


def compare(got: np.ndarray, ref: Reference, k: float, what: str) -> CheckResult:
    """Accept ``got`` when max |got - ref64| <= k * max(own error, floor); else CheckFailed."""
    if got.shape != ref.ref64.shape:
        raise CheckFailed(f"{what} output shape {got.shape} differs from PyTorch's {ref.ref64.shape}")
    diff = float(np.abs(got.astype(np.float64) - ref.ref64).max())
    result = CheckResult(len(got), diff, ref.own_error, ref.floor, ref.allowed(k), k, ref.precision)
    if not np.isfinite(diff) or diff > result.allowed:
        raise CheckFailed(f"{what} differs from PyTorch (float64) by {diff:.3g}, more than "
                          f"{k:g} x PyTorch {ref.precision}'s own error {max(ref.own_error, ref.floor):.3g} "
                          f"(allowed {result.allowed:.3g})")
    return result
