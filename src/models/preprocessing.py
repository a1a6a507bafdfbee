"""The one rule for a model's eval preprocessing, which train.py, eval.py and export.py all call.

As timm's ``resolve_data_config``: the weights' own settings (a checkpoint's stored preprocessing,
a published entry's) or else the architecture's reference settings at the run's image size, then
the explicit settings of a config or command line on top. export.py writes the result into the
ONNX metadata, so the runner uses it too.
"""
from __future__ import annotations

from src.common.errors import ModelLoadError
from src.common.preprocess import Preprocess

from .weights import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, default_preprocess

VARIANT_NORMALIZATION = "variant"  # keep the base preprocessing's mean/std
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "inception": (INCEPTION_MEAN, INCEPTION_STD)}


def resolve_preprocess(
    arch: str,
    saved: Preprocess | None = None,
    *,
    image_size: int | None = None,
    resize: int | None = None,
    crop: int | None = None,
    interpolation: str | None = None,
    normalization: str | None = None,
) -> Preprocess:
    """Eval preprocessing for weights of architecture ``arch``, highest precedence last:

    1. ``saved``: the weights' own (a train.py checkpoint's, a published or foreign file's); else the
       architecture's reference settings (src.models.weights.default_preprocess), at ``image_size``
       with the same resize/crop ratio when one is given (a config's training size);
    2. ``resize`` / ``crop`` (one alone keeps the ratio: B0 at crop 32 resizes to 37), ``interpolation``,
       ``normalization`` ("imagenet", "inception", or "variant" = the base's mean/std).

    ModelLoadError names the setting that is not allowed.
    """
    if normalization not in (None, VARIANT_NORMALIZATION, *NORMALIZATIONS):
        raise ModelLoadError(f"normalization must be one of {VARIANT_NORMALIZATION}, "
                             f"{', '.join(NORMALIZATIONS)}; got {normalization!r}")
    base = saved
    if base is None:
        base = default_preprocess(arch)
        base = base.at_crop(image_size) if image_size else base
    mean, std = NORMALIZATIONS.get(normalization or VARIANT_NORMALIZATION, (None, None))
    try:
        return base.override(resize, crop, interpolation, mean, std)
    except ValueError as exc:  # Preprocess names the field and what is allowed
        raise ModelLoadError(f"bad eval preprocessing: {exc}") from None
