"""EfficientNet B0–B7, Lite0–4 and V2-S/M/L, weight-compatible with torchvision; weights from any layout."""
from .layouts import ImportedWeights, WeightMismatchError, import_weights, read_weight_file
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
from .pretrained import build_pretrained, check_fits, load_pretrained, load_weights, read_state_dict, resolve_weights
from .weights import WeightsNotInstalled

__all__ = [
    "NETWORK_STRIDE",
    "PADDINGS",
    "VARIANTS",
    "EfficientNet",
    "ImportedWeights",
    "Stage",
    "VariantSpec",
    "WeightMismatchError",
    "WeightsNotInstalled",
    "build_model",
    "build_pretrained",
    "check_fits",
    "get_variant",
    "import_weights",
    "list_models",
    "load_pretrained",
    "load_weights",
    "read_state_dict",
    "read_weight_file",
    "resolve_weights",
]
