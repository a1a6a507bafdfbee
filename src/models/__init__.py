"""EfficientNet B0–B7 and V2-S/M/L, weight-compatible with torchvision."""
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
from .pretrained import WeightMismatchError, check_fits, load_pretrained, read_state_dict

__all__ = [
    "NETWORK_STRIDE",
    "VARIANTS",
    "EfficientNet",
    "Stage",
    "VariantSpec",
    "WeightMismatchError",
    "build_model",
    "check_fits",
    "get_variant",
    "list_models",
    "load_pretrained",
    "read_state_dict",
]
