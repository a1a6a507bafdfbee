"""Training augmentation and the eval transform, producing uint8 CHW tensors.

Workers only decode, crop and augment; conversion to float and normalisation happen on the
device (`src.dataset.to_device_normalized`), which keeps worker CPU and host->device bytes low.

RandomResizedCrop is written here so it can pick the crop box on the full-size geometry (read
from the file header, no decoding) and then let the JPEG decoder downscale by 2/4/8 when the box
is large compared with the output (`preprocess.draft_factor`). On 4000x3000 photos this
decodes a fraction of the pixels; on ImageNet-sized files it never triggers. The box is then
resampled by torch's antialiased uint8 kernels (the same triangle / cubic filters as Pillow's,
vectorised: about 2x faster than Pillow's resize) straight into the uint8 tensor the pipeline
returns. Bilinear results are within one grey level of Pillow's; bicubic too, except rare pixels
on hard edges (< 0.01%) where the two clip the cubic overshoot differently. The flip works on
that tensor too; only Pillow-based policies (colour jitter, AutoAugment, RandAugment, rotation)
convert to a Pillow image.

Named strengths (`augment`):
  none      resize shorter side + centre crop only (no randomness)
  light     random resized crop of 25-100% of the area (mild) + horizontal flip + colour jitter 0.1
  moderate  Inception crop (crop_scale_min, default 8-100%) + flip + colour jitter 0.1 + RandAugment(2, 9)
            + random erasing 0.1 (auto_augment = randaugment)
  strong    Inception crop + flip + AutoAugment(ImageNet) + colour jitter 0.4 + random erasing 0.25
  custom    every key from the config as given
A preset fills the policy keys (color_jitter, auto_augment, randaug_*, random_erasing; light also
crop_scale_min) that the config did not set explicitly (`cfg.explicit`); explicit keys always win.
RandAugment runs when auto_augment is 'randaugment', with randaug_num_ops / randaug_magnitude.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from src.preprocess import (
    INTERPOLATIONS, Preprocess, apply_draft, decode_rgb, draft_factor, eval_image, load_rgb,
    open_image, oriented_size, resize_center_crop, to_rgb,
)

ImageSource = Union[str, os.PathLike, Image.Image]

RRC_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
ERASING_SCALE: tuple[float, float] = (0.02, 1.0 / 3.0)
ERASING_RATIO: tuple[float, float] = (0.3, 3.3)
ERASING_ATTEMPTS = 10
HFLIP_PROB = 0.5
# Filters torch resamples with antialiasing (Pillow's definitions); others fall back to Pillow.
TORCH_RESAMPLING = ("bilinear", "bicubic")

AUGMENT_LEVELS = ("none", "light", "moderate", "strong", "custom")
AUTO_AUGMENT_POLICIES = ("none", "imagenet", "randaugment")
ERASING_FILLS = ("zero", "random")

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
    erasing_fill: str = "zero"
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
            ("erasing_fill", self.erasing_fill in ERASING_FILLS, f"one of {ERASING_FILLS}"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(f"{key} must be {expected}, got {getattr(self, key)!r}")


def resolve_augment(cfg: Any) -> AugmentConfig:
    """AugmentConfig from a Config object or a dict, applying the named preset.

    Keys missing from cfg take AugmentConfig's defaults. For objects, preset keys are taken
    from cfg only when listed in `cfg.explicit`; for dicts every present key is explicit.
    """
    if isinstance(cfg, Mapping):
        values, explicit = dict(cfg), set(cfg)
    else:
        values = {f.name: getattr(cfg, f.name) for f in fields(AugmentConfig) if hasattr(cfg, f.name)}
        explicit = set(getattr(cfg, "explicit", ()) or ())
    known = {f.name for f in fields(AugmentConfig)}
    aug = AugmentConfig(**{k: v for k, v in values.items() if k in known})
    preset = {k: v for k, v in PRESETS.get(aug.augment, {}).items() if k not in explicit}
    return replace(aug, **preset)


# --------------------------------------------------------------------------------------------
# Random resized crop with JPEG draft decoding
# --------------------------------------------------------------------------------------------
def sample_crop_box(width: int, height: int, scale: tuple[float, float],
                    ratio: tuple[float, float] = RRC_RATIO) -> tuple[int, int, int, int]:
    """(left, top, w, h) of an Inception-style random crop: area fraction ~ U(scale), aspect
    ratio log-uniform in `ratio`, position uniform; after RRC_ATTEMPTS misses, the largest
    centred crop whose aspect ratio lies within `ratio`. Uses torch's RNG (seeded per worker)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(RRC_ATTEMPTS):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_lo, log_hi).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,)).item())
            left = int(torch.randint(0, width - w + 1, (1,)).item())
            return left, top, w, h
    image_ratio = width / height
    if image_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


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
    return resize_to_tensor(img.crop(pixel_box), size, interpolation)


def resize_to_tensor(img: Image.Image, size: int, interpolation: str) -> torch.Tensor:
    """RGB image -> antialiased resize to size x size -> uint8 (3, size, size) tensor.

    Bilinear and bicubic run in torch (uint8 kernels, Pillow's filter definitions; see the
    module doc for how close to Pillow); other filters use Pillow.
    """
    if interpolation not in TORCH_RESAMPLING:
        return pil_to_uint8_chw(img.resize((size, size), INTERPOLATIONS[interpolation]))
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(x, size=(size, size), mode=interpolation, antialias=True, align_corners=False)
    return out[0]


def full_size(source: ImageSource) -> tuple[int, int]:
    """Upright (width, height) of a file (header only) or an image."""
    if isinstance(source, Image.Image):
        return source.size
    with open_image(source) as img:
        return oriented_size(img)


class RandomResizedCropDraft:
    """RandomResizedCrop on a path or PIL image -> uint8 (3, size, size) tensor (see module doc)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = RRC_RATIO, interpolation: str = "bilinear",
                 use_draft: bool = True) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio
        self.interpolation, self.use_draft = interpolation, use_draft

    def __call__(self, source: ImageSource) -> torch.Tensor:
        if isinstance(source, Image.Image):
            source = to_rgb(source)
        width, height = full_size(source)
        box = sample_crop_box(width, height, self.scale, self.ratio)
        return decode_crop_resize(source, box, self.size, self.interpolation, self.use_draft)


# --------------------------------------------------------------------------------------------
# Tensor-side pieces
# --------------------------------------------------------------------------------------------
def pil_to_uint8_chw(img: Image.Image) -> torch.Tensor:
    """RGB PIL -> uint8 (3, H, W) tensor: a CHW view of the HWC pixels (one copy out of Pillow;
    the collate's torch.stack makes the batch contiguous in the copy it does anyway)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def uint8_chw_to_pil(x: torch.Tensor) -> Image.Image:
    """uint8 (3, H, W) tensor -> RGB PIL image, for the Pillow-based policies."""
    return Image.fromarray(np.ascontiguousarray(x.permute(1, 2, 0).numpy()), "RGB")


class RandomErasingUint8:
    """Random erasing (Zhong et al. 2017) on a uint8 CHW tensor: with probability p, one
    rectangle of area fraction ~ U(0.02, 1/3), log-uniform aspect in (0.3, 3.3) is set to 0
    ('zero') or to uniform random bytes per pixel ('random')."""

    def __init__(self, p: float, fill: str = "zero") -> None:
        if fill not in ERASING_FILLS:
            raise ValueError(f"erasing_fill must be one of {ERASING_FILLS}, got {fill!r}")
        self.p, self.fill = p, fill

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or torch.rand(1).item() >= self.p:
            return x
        channels, height, width = x.shape
        log_lo, log_hi = math.log(ERASING_RATIO[0]), math.log(ERASING_RATIO[1])
        for _ in range(ERASING_ATTEMPTS):
            target = height * width * torch.empty(1).uniform_(*ERASING_SCALE).item()
            aspect = math.exp(torch.empty(1).uniform_(log_lo, log_hi).item())
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if 0 < h < height and 0 < w < width:
                top = int(torch.randint(0, height - h + 1, (1,)).item())
                left = int(torch.randint(0, width - w + 1, (1,)).item())
                x = x.clone()
                if self.fill == "zero":
                    x[:, top:top + h, left:left + w] = 0
                else:
                    x[:, top:top + h, left:left + w] = torch.randint(
                        0, 256, (channels, h, w), dtype=torch.uint8)
                return x
        return x


class RandomHorizontalFlip:
    """Mirror left-right with probability p; works on uint8 CHW tensors and PIL images alike."""

    accepts_tensor = True

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: torch.Tensor | Image.Image) -> torch.Tensor | Image.Image:
        if self.p > 0 and torch.rand(1).item() < self.p:
            if isinstance(img, torch.Tensor):
                return img.flip(-1)
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


class ResizeCenterCrop:
    """The 'none' strength: deterministic resize shorter side + centre crop of a path or image
    (large JPEGs decoded at reduced scale when use_draft, see preprocess.load_rgb)."""

    def __init__(self, resize: int, crop: int, interpolation: str, use_draft: bool = True) -> None:
        self.resize, self.crop, self.interpolation = resize, crop, interpolation
        self.use_draft = use_draft

    def __call__(self, source: ImageSource) -> Image.Image:
        if isinstance(source, Image.Image):
            img = to_rgb(source)
        else:
            img = load_rgb(source, min_size=self.resize if self.use_draft else None)
        return resize_center_crop(img, self.resize, self.crop, self.interpolation)


class TrainTransform:
    """path or PIL image -> augmented uint8 (3, size, size) tensor.

    `crop` returns a tensor (random resized crop) or a PIL image (resize + centre crop); each
    of `pil_ops` gets a PIL image unless it declares `accepts_tensor`, so the image is converted
    only when a Pillow-based policy runs; `tensor_ops` run last, on the tensor.
    """

    def __init__(self, crop: Callable[[ImageSource], torch.Tensor | Image.Image],
                 pil_ops: list[Callable[[Any], Any]],
                 tensor_ops: list[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.crop, self.pil_ops, self.tensor_ops = crop, pil_ops, tensor_ops

    def __call__(self, source: ImageSource) -> torch.Tensor:
        x = self.crop(source)
        for op in self.pil_ops:
            if isinstance(x, torch.Tensor) and not getattr(op, "accepts_tensor", False):
                x = uint8_chw_to_pil(x)
            x = op(x)
        if isinstance(x, Image.Image):
            x = pil_to_uint8_chw(x)
        for op in self.tensor_ops:
            x = op(x)
        return x

    def __repr__(self) -> str:
        ops = [self.crop, *self.pil_ops, *self.tensor_ops]
        return "TrainTransform(" + ", ".join(type(op).__name__ for op in ops) + ")"


def build_train_transform(cfg: Any, image_size: int, interpolation: str,
                          eval_resize: int | None = None) -> TrainTransform:
    """Training transform for crop size `image_size` from config keys (see AugmentConfig).

    eval_resize: shorter-side size for the 'none' strength (default image_size, no crop loss).
    The crop and flip run on the uint8 tensor, policies on PIL images (Pillow kernels), random
    erasing on the tensor again.
    """
    aug = resolve_augment(cfg)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, "
                         f"got {interpolation!r}")
    if aug.augment == "none":
        return TrainTransform(ResizeCenterCrop(eval_resize or image_size, image_size,
                                               interpolation, aug.jpeg_draft), [], [])
    crop = RandomResizedCropDraft(image_size, (aug.crop_scale_min, 1.0), RRC_RATIO,
                                  interpolation, aug.jpeg_draft)
    pil_ops: list[Callable[[Any], Any]] = [RandomHorizontalFlip(aug.hflip)]
    if aug.auto_augment == "imagenet":
        pil_ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    elif aug.auto_augment == "randaugment":
        pil_ops.append(v2.RandAugment(num_ops=aug.randaug_num_ops,
                                      magnitude=aug.randaug_magnitude))
    if aug.color_jitter > 0:
        cj = aug.color_jitter
        pil_ops.append(v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj))
    if aug.rotation > 0:
        pil_ops.append(v2.RandomRotation(aug.rotation,
                                         interpolation=v2.InterpolationMode.BILINEAR))
    tensor_ops: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if aug.random_erasing > 0:
        tensor_ops.append(RandomErasingUint8(aug.random_erasing, aug.erasing_fill))
    return TrainTransform(crop, pil_ops, tensor_ops)


class EvalTransform:
    """path or PIL image -> uint8 (3, crop, crop) tensor via preprocess.eval_image.

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
