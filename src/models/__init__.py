"""EfficientNet B0–B7, Lite0–4 and V2-S/M/L, weight-compatible with torchvision; weights from any layout.

Architectures: VARIANTS (effnet.py). Published weights, one entry per source: WEIGHTS (weights.py).
May import src.common, src.runtime and infer (the layers below); never src.data (same layer),
src.config or the job packages: the network knows nothing of training.
"""
from .layouts import ImportedWeights, WeightMismatchError, import_weights
from .effnet import (
    NETWORK_STRIDE,
    VARIANTS,
    EfficientNet,
    Stage,
    VariantSpec,
    build_model,
    get_variant,
    list_models,
)
from .layers import PADDINGS
from .pretrained import build_pretrained, check_fits, load_pretrained, load_weights, resolve_weights
from .weights import WEIGHTS, Weights, WeightsNotInstalled, default_preprocess, default_weights, get_weights

__all__ = [
    "NETWORK_STRIDE",
    "PADDINGS",
    "VARIANTS",
    "EfficientNet",
    "ImportedWeights",
    "Stage",
    "VariantSpec",
    "WEIGHTS",
    "WeightMismatchError",
    "Weights",
    "WeightsNotInstalled",
    "build_model",
    "build_pretrained",
    "check_fits",
    "default_preprocess",
    "default_weights",
    "get_variant",
    "get_weights",
    "import_weights",
    "list_models",
    "load_pretrained",
    "load_weights",
    "resolve_weights",
]
