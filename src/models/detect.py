"""Which convention a timm-layout file was trained in, decided from its weights, not its name.

timm's own ``efficientnet_lite0`` and Google's ported ``tf_efficientnet_lite0`` have identical keys
but need different padding, BatchNorm epsilon and mean/std, and a file name proves nothing (Google's
Lite0 saved as ``lite0_timm.pth`` loaded as timm's own scores 68.8% top-1 on ImageNet photos instead
of 87%). A BatchNorm layer's running statistics are the mean and variance of its input over the
training images, so the convention the weights were trained in is the one under which a few natural
photos give each BatchNorm input a mean and variance closest to the stored ones.

The distance is the Gaussian KL divergence of the photos' per-channel statistics from the stored
ones, averaged over channels and layers. The photos are always the same committed sample photos
(SAMPLE_PHOTOS): natural photos suit ImageNet statistics better than arbitrary user data (digits,
X-rays), and a fixed probe gives a file the same convention in train.py, eval.py and export.py.
Google's real Lite0 in timm's layout: 0.23 under TensorFlow's convention, 0.35 under timm's (1.52x).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from src.common.errors import InputError
from src.common.preprocess import Preprocess, eval_image, images_under, load_rgb, normalize_batch

from .effnet import build_model
from .weights import TENSORFLOW, TIMM, trained_as

# The 24 committed real photos (tests/data/README.md); every third one, so each class is in the probe.
SAMPLE_PHOTOS = Path(__file__).resolve().parents[2] / "tests" / "data" / "flowers17"
PROBE_STRIDE = 3
MIN_MARGIN = 1.2  # the runner-up's divergence over the winner's below this: too close to call
MAX_DIVERGENCE = 3.0  # real weights on natural photos: 0.2-0.5; above this the statistics fit no convention
CONVENTION_WORDS = {TENSORFLOW: "TensorFlow's (Google's tf_ ports: SAME padding, eps 1e-3)",
                    TIMM: "timm's own (symmetric padding, eps 1e-5)"}
PADDING_HINT = ("pass --padding same (Google's tf_ ports) or --padding symmetric (timm's own) to eval.py or "
                "train.py, or convert it once: python -m src.models.convert FILE OUT --padding ...")


class ConventionUndecided(InputError):
    """The weights' BatchNorm statistics do not tell the conventions apart; the message names --padding."""


@dataclass(frozen=True)
class Detection:
    """The convention chosen, and each candidate's mean BatchNorm divergence on ``images`` photos."""

    convention: str
    divergence: dict[str, float]
    images: int

    @property
    def margin(self) -> float:
        """The runner-up's divergence over the winner's (1.0: a tie)."""
        best, second = sorted(self.divergence.values())[:2]
        return second / best if best > 0 else float("inf")

    def why(self) -> str:
        """'chosen from the weights: ...' for the note that says which padding was built."""
        others = ", ".join(f"{d:.3f} as {c}" for c, d in self.divergence.items() if c != self.convention)
        return (f"chosen from the weights: their BatchNorm statistics fit {CONVENTION_WORDS[self.convention]} "
                f"{self.margin:.2f}x better on {self.images} sample photos, divergence "
                f"{self.divergence[self.convention]:.3f} vs {others}")


def probe_photos(folder: str | Path = SAMPLE_PHOTOS, stride: int = PROBE_STRIDE) -> list[str]:
    """Every ``stride``-th photo under ``folder``, in a fixed order."""
    return images_under(folder)[::stride] if Path(folder).is_dir() else []


def detect_convention(state: Mapping[str, torch.Tensor], arch: str, source: str,
                      candidates: Sequence[str] = (TENSORFLOW, TIMM),
                      images: Sequence[str] | None = None) -> Detection:
    """The candidate convention whose build and preprocessing make ``images`` (default: the sample
    photos) match the stored BatchNorm statistics of ``state`` (this project's keys) best.
    ConventionUndecided, naming --padding, when none fits or two fit about equally."""
    paths = probe_photos() if images is None else list(images)
    if not paths:
        raise ConventionUndecided(f"{source}: timm-layout weights need sample photos to tell Google's tf_ ports "
                                  f"from timm's own, and {SAMPLE_PHOTOS} has none; {PADDING_HINT}")
    divergence = {c: _divergence(state, arch, c, paths) for c in candidates}
    found = Detection(min(divergence, key=divergence.get), divergence, len(paths))
    if divergence[found.convention] > MAX_DIVERGENCE or found.margin < MIN_MARGIN:
        shown = ", ".join(f"{d:.3f} as {c}" for c, d in divergence.items())
        raise ConventionUndecided(f"{source}: the convention of these timm-layout weights cannot be told from "
                                  f"their BatchNorm statistics (divergence {shown} on {len(paths)} sample "
                                  f"photos); {PADDING_HINT}")
    return found


@torch.no_grad()
def _divergence(state: Mapping[str, torch.Tensor], arch: str, convention: str, paths: Sequence[str]) -> float:
    """Mean KL divergence of the photos' BatchNorm input statistics from the stored ones, with the
    network built and the photos preprocessed as ``convention`` would."""
    trained = trained_as(convention, arch, why="probe")
    head = state.get("classifier.1.weight")
    model = build_model(arch, num_classes=1000 if head is None else int(head.shape[0]), padding=trained.padding,
                        bn_eps=trained.bn_eps)
    model.load_state_dict({**model.state_dict(), **state}, strict=True)  # a headless file keeps a random head
    pre = Preprocess.from_dict(trained.preprocess)
    pixels = np.stack([eval_image(load_rgb(path), pre) for path in paths])
    scores: list[float] = []
    hooks = [bn.register_forward_hook(lambda module, inputs, _: scores.append(_kl(module, inputs[0])))
             for bn in model.modules() if isinstance(bn, nn.BatchNorm2d)]
    try:
        model.eval()(torch.from_numpy(normalize_batch(pixels, pre.mean, pre.std)))
    finally:
        for hook in hooks:
            hook.remove()
    return float(np.mean(scores))


def _kl(bn: nn.BatchNorm2d, x: torch.Tensor) -> float:
    """KL(N(batch mean, batch var) || N(running mean, running var + eps)), averaged over channels."""
    x = x.double()
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False).clamp_min(1e-12)
    stored_mean, stored_var = bn.running_mean.double(), bn.running_var.double() + bn.eps
    ratio = var / stored_var
    return float((0.5 * (ratio + (mean - stored_mean) ** 2 / stored_var - 1 - ratio.log())).mean())
