"""Training augmentation and the eval transform, producing uint8 CHW tensors.

Workers only decode, crop and augment; conversion to float and normalisation happen on the
device (`to_device_normalized`, below), which keeps worker CPU and host->device bytes low.

The training chain is a `torchvision.transforms.v2.Compose` on uint8 tensors, as torchvision
recommends for speed: RandomResizedCrop (antialiased), RandomHorizontalFlip, the policies,
RandomErasing. One step is ours: `RandomResizedCropDraft` is v2's RandomResizedCrop taking a file
instead of decoded pixels. It draws the crop box (v2's `make_params`, so the same boxes as
torchvision for the same seed) on the full-size geometry read from the file header, then lets the
JPEG decoder downscale by 2/4/8 when the box is large compared with the output
(`preprocess.draft_factor`). On 4000x3000 photos this decodes a fraction of the pixels; on
ImageNet-sized files it never triggers. The box is then resampled by v2's `resize` on the uint8
tensor (torch's antialiased uint8 kernels, Pillow's triangle / cubic filters, vectorised: about
2x faster than Pillow's resize). Bilinear results are within one grey level of Pillow's; bicubic
too, except rare pixels on hard edges (< 0.01%) where the two clip the cubic overshoot
differently. Colour jitter, AutoAugment, RandAugment and rotation are v2 transforms run on a
Pillow image (Pillow's uint8 kernels; the tensor <-> Pillow round trip is lossless).

The 'none' strength and the eval transform use `preprocess.eval_image` / `resize_center_crop`
(Pillow resize), shared with eval.py and the torch-free ONNX runner, equal to the pixel to
torchvision's published eval preset on Pillow images.

Named strengths (`augment`):
  none      resize shorter side + centre crop only (no randomness)
  light     random resized crop of 25-100% of the area (mild) + horizontal flip + colour jitter 0.1
  moderate  Inception crop (crop_scale_min, default 8-100%) + flip + colour jitter 0.1 + RandAugment(2, 9)
            + random erasing 0.1 (auto_augment = randaugment)
  strong    Inception crop + flip + AutoAugment(ImageNet) + colour jitter 0.4 + random erasing 0.25
  custom    every key from the config as given
A preset fills the policy keys (color_jitter, auto_augment, randaug_*, random_erasing; light also
crop_scale_min) that were not set explicitly (``resolve_augment``'s ``explicit``); explicit keys always
win. RandAugment runs when auto_augment is 'randaugment', with randaug_num_ops / randaug_magnitude.
The builders take plain values (``AugmentConfig``), not the run's Config.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Sequence, Union

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from src.common.preprocess import (
    INTERPOLATIONS, Preprocess, apply_draft, decode_rgb, draft_factor, eval_image, load_rgb,
    open_image, oriented_size, resize_center_crop, to_rgb,
)

# A file (path or file object, e.g. a tar shard's member) or an already decoded image (CIFAR).
ImageSource = Union[str, os.PathLike, BinaryIO, Image.Image]

RRC_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
ERASING_SCALE: tuple[float, float] = (0.02, 1.0 / 3.0)
ERASING_RATIO: tuple[float, float] = (0.3, 3.3)
HFLIP_PROB = 0.5
UINT8_MAX = 255.0
# Filters torch resamples with antialiasing (Pillow's definitions); others fall back to Pillow.
TORCH_RESAMPLING = ("bilinear", "bicubic")

AUGMENT_LEVELS = ("none", "light", "moderate", "strong", "custom")
AUTO_AUGMENT_POLICIES = ("none", "imagenet", "randaugment")

PRESETS: dict[str, dict[str, Any]] = {
    # mild crops (a quarter of the image or more), as fine-tune recipes use: small sets, few epochs
    "light": dict(crop_scale_min=0.25, color_jitter=0.1, auto_augment="none", random_erasing=0.0),
    "moderate": dict(color_jitter=0.1, auto_augment="randaugment", randaug_num_ops=2,
                     randaug_magnitude=9, random_erasing=0.1),
    "strong": dict(color_jitter=0.4, auto_augment="imagenet", random_erasing=0.25),
}


@dataclass(frozen=True)
class AugmentConfig:
    """Resolved training augmentation settings (config key names)."""

    augment: str = "light"
    crop_scale_min: float = 0.08
    hflip: float = HFLIP_PROB
    color_jitter: float = 0.0
    auto_augment: str = "none"
    randaug_num_ops: int = 2
    randaug_magnitude: int = 9
    rotation: float = 0.0
    random_erasing: float = 0.0
    jpeg_draft: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("augment", self.augment in AUGMENT_LEVELS, f"one of {AUGMENT_LEVELS}"),
            ("crop_scale_min", 0.0 < self.crop_scale_min <= 1.0, "in (0, 1]"),
            ("hflip", 0.0 <= self.hflip <= 1.0, "a probability in [0, 1]"),
            ("color_jitter", self.color_jitter >= 0.0, ">= 0"),
            ("auto_augment", self.auto_augment in AUTO_AUGMENT_POLICIES,
             f"one of {AUTO_AUGMENT_POLICIES}"),
            ("randaug_num_ops", self.randaug_num_ops >= 0, ">= 0"),
            ("randaug_magnitude", 0 <= self.randaug_magnitude <= 30, "in [0, 30]"),
            ("rotation", self.rotation >= 0.0, ">= 0 (degrees)"),
            ("random_erasing", 0.0 <= self.random_erasing <= 1.0, "a probability in [0, 1]"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(f"{key} must be {expected}, got {getattr(self, key)!r}")


def resolve_augment(values: Mapping[str, Any], explicit: Iterable[str] | None = None) -> AugmentConfig:
    """AugmentConfig from config-key values (keys it does not know are ignored, missing ones take its
    defaults), with the named preset (``values["augment"]``) filling the policy keys not in
    ``explicit`` (None: every key of ``values`` counts as set)."""
    explicit = set(values if explicit is None else explicit)
    known = {f.name for f in fields(AugmentConfig)}
    aug = AugmentConfig(**{k: v for k, v in values.items() if k in known})
    preset = {k: v for k, v in PRESETS.get(aug.augment, {}).items() if k not in explicit}
    return replace(aug, **preset)


# --------------------------------------------------------------------------------------------
# Random resized crop with JPEG draft decoding
# --------------------------------------------------------------------------------------------
def decode_crop_resize(source: ImageSource, box: tuple[int, int, int, int], size: int,
                       interpolation: str, use_draft: bool = True) -> torch.Tensor:
    """Crop `box` (left, top, w, h on the upright full-size image), resize to size x size ->
    uint8 (3, size, size) tensor.

    With use_draft, a JPEG is decoded at 1/2, 1/4 or 1/8 scale while the box keeps
    >= DRAFT_SAFETY * size pixels on its shorter side; the box is mapped to the reduced image
    and rounded to its pixel grid (at most half a reduced pixel per edge, <= 1/4 of an output
    pixel since the reduced box still spans >= 2 * size pixels).
    """
    left, top, w, h = box
    if isinstance(source, Image.Image):
        img, factor = to_rgb(source), 1.0
    else:
        with open_image(source) as raw:
            factor = apply_draft(raw, draft_factor(min(w, h), size)) if use_draft else 1.0
            img = decode_rgb(raw, source)
    if factor == 1.0:
        pixel_box = (left, top, left + w, top + h)
    else:
        x0, y0 = min(round(left / factor), img.width - 1), min(round(top / factor), img.height - 1)
        pixel_box = (x0, y0, max(x0 + 1, min(round((left + w) / factor), img.width)),
                     max(y0 + 1, min(round((top + h) / factor), img.height)))
    # Cropping in Pillow first converts only the box's pixels to the tensor.
    return resize_to_tensor(img.crop(pixel_box), size, interpolation)


def resize_to_tensor(img: Image.Image, size: int, interpolation: str) -> torch.Tensor:
    """RGB image -> antialiased resize to size x size -> uint8 (3, size, size) tensor.

    Bilinear and bicubic run on the uint8 tensor (v2's resize: torch's uint8 kernels, Pillow's
    filter definitions; see the module doc for how close to Pillow); the filters torch lacks
    (box, hamming, lanczos, and Pillow's nearest) resize the Pillow image.
    """
    mode = InterpolationMode(interpolation)
    if interpolation in TORCH_RESAMPLING:
        return TF.resize(TF.pil_to_tensor(img), [size, size], mode, antialias=True)
    return TF.pil_to_tensor(TF.resize(img, [size, size], mode))


def full_size(source: ImageSource) -> tuple[int, int]:
    """Upright (width, height) of a file (header only) or an image."""
    if isinstance(source, Image.Image):
        return source.size
    with open_image(source) as img:
        return oriented_size(img)


class RandomResizedCropDraft(v2.RandomResizedCrop):
    """v2.RandomResizedCrop (antialiased) taking a file or PIL image -> uint8 (3, size, size)
    tensor, decoding a JPEG at reduced scale when the box allows (see module doc)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = RRC_RATIO, interpolation: str = "bilinear",
                 use_draft: bool = True) -> None:
        super().__init__(size, scale, ratio, InterpolationMode(interpolation), antialias=True)
        self.use_draft = use_draft

    def forward(self, source: ImageSource) -> torch.Tensor:
        if isinstance(source, Image.Image):
            source = to_rgb(source)
        width, height = full_size(source)
        # make_params reads only the size: an empty stand-in lets it draw before any decoding
        box = self.make_params([torch.empty((0, height, width), dtype=torch.uint8)])
        return decode_crop_resize(source, (box["left"], box["top"], box["width"], box["height"]),
                                  self.size[0], self.interpolation.value, self.use_draft)


# --------------------------------------------------------------------------------------------
# Erasing, the 'none' strength, the chains
# --------------------------------------------------------------------------------------------
def random_erasing(p: float) -> v2.RandomErasing:
    """Random erasing (Zhong et al. 2017) on a uint8 CHW tensor: with probability p, one rectangle of
    area fraction ~ U(0.02, 1/3), log-uniform aspect in (0.3, 3.3) is set to 0."""
    return v2.RandomErasing(p=p, scale=ERASING_SCALE, ratio=ERASING_RATIO, value=0)


class ResizeCenterCrop:
    """The 'none' strength: deterministic resize shorter side + centre crop of a file or image ->
    uint8 (3, crop, crop) tensor, the eval geometry (preprocess.resize_center_crop; large JPEGs
    decoded at reduced scale when use_draft, see preprocess.load_rgb)."""

    def __init__(self, resize: int, crop: int, interpolation: str, use_draft: bool = True) -> None:
        self.resize, self.crop, self.interpolation = resize, crop, interpolation
        self.use_draft = use_draft

    def __call__(self, source: ImageSource) -> torch.Tensor:
        if isinstance(source, Image.Image):
            img = to_rgb(source)
        else:
            img = load_rgb(source, min_size=self.resize if self.use_draft else None)
        return TF.pil_to_tensor(resize_center_crop(img, self.resize, self.crop, self.interpolation))

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(resize={self.resize}, crop={self.crop}, {self.interpolation})"


def build_train_transform(aug: AugmentConfig, image_size: int, interpolation: str,
                          eval_resize: int | None = None) -> v2.Compose:
    """Training transform (file or PIL image -> uint8 (3, image_size, image_size) tensor) with the
    augmentation ``aug`` (resolve_augment makes one from config keys and a preset).

    eval_resize: shorter-side size for the 'none' strength (default image_size, no crop loss).
    The crop and flip run on the uint8 tensor, policies on a Pillow image (Pillow kernels),
    random erasing on the tensor again. Every random draw comes from torch's global generator,
    which the loaders seed per sample (src.data.sampler.SeededDataset): a resumed run replays it.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, "
                         f"got {interpolation!r}")
    if aug.augment == "none":
        return v2.Compose([ResizeCenterCrop(eval_resize or image_size, image_size,
                                            interpolation, aug.jpeg_draft)])
    ops: list[Callable[[Any], Any]] = [
        RandomResizedCropDraft(image_size, (aug.crop_scale_min, 1.0), RRC_RATIO, interpolation,
                               aug.jpeg_draft)]
    if aug.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(aug.hflip))
    policies: list[v2.Transform] = []
    if aug.auto_augment == "imagenet":
        policies.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    elif aug.auto_augment == "randaugment":
        policies.append(v2.RandAugment(num_ops=aug.randaug_num_ops, magnitude=aug.randaug_magnitude))
    if aug.color_jitter > 0:
        cj = aug.color_jitter
        policies.append(v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj))
    if aug.rotation > 0:
        policies.append(v2.RandomRotation(aug.rotation, interpolation=InterpolationMode.BILINEAR))
    if policies:
        ops += [v2.ToPILImage(), *policies, v2.PILToTensor()]
    if aug.random_erasing > 0:
        ops.append(random_erasing(aug.random_erasing))
    return v2.Compose(ops)


class EvalTransform:
    """file or PIL image -> uint8 (3, crop, crop) tensor via preprocess.eval_image.

    draft=True decodes large JPEGs at reduced scale (preprocess.load_rgb min_size); it is off
    by default so eval.py and the ONNX runner agree to the pixel.
    """

    def __init__(self, pre: Preprocess, draft: bool = False) -> None:
        self.pre, self.draft = pre, draft

    def __call__(self, source: ImageSource) -> torch.Tensor:
        if isinstance(source, Image.Image):
            img = source
        else:
            img = load_rgb(source, min_size=self.pre.resize if self.draft else None)
        return torch.from_numpy(eval_image(img, self.pre)).permute(2, 0, 1)

    def __repr__(self) -> str:
        return f"EvalTransform({self.pre}, draft={self.draft})"


def build_eval_transform(pre: Preprocess, draft: bool = False) -> EvalTransform:
    """Eval transform matching eval.py / infer/ preprocessing (see EvalTransform)."""
    return EvalTransform(pre, draft)


def to_device_normalized(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                         device: torch.device | str, channels_last: bool = False,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 NCHW -> (x / 255 - mean) / std on `device` (same float32 arithmetic as the eval
    preprocessing), then cast to `dtype`. The uint8 copy is non-blocking (pin the batch)."""
    x = images.to(device, non_blocking=True).to(torch.float32).div_(UINT8_MAX)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    x = x.sub_(mean_t).div_(std_t).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
