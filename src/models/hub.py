"""Weights from the Hugging Face hub: ``--pretrained hf-hub:timm/tf_efficientnet_lite0.in1k``.

huggingface_hub, the library made for the hub, fetches a repository's ``config.json`` and
``model.safetensors`` (else ``pytorch_model.bin``, which src.models.files reads weights-only) once
into its cache; HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE=1 work as they do for every other library.

A timm repository's config.json says what a file name cannot: the architecture (timm's model name:
``tf_*`` are Google's TensorFlow checkpoints, SAME padding and BatchNorm eps 1e-3; the others timm's
own, symmetric and 1e-5), the eval preprocessing (input_size, crop_pct, interpolation, mean, std;
their test-time values when given) and the class count. A repository the weights registry knows
(src.models.weights.hub_entry) takes its settings from its entry instead.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.common.errors import ModelLoadError
from src.common.preprocess import Preprocess

from .effnet import VARIANTS
from .weights import IMAGENET_MEAN, IMAGENET_STD, TENSORFLOW, TIMM, TIMM_CROP_FRACTION, Trained, trained_as

HUB_PREFIX = "hf-hub:"
HUB_CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm pushes, safetensors first
TF_PREFIX = "tf_"  # timm's ports of Google's TensorFlow checkpoints
IMAGENET_TAG = "in1k"  # timm's tags of ImageNet-1k classifiers: in1k, ra_in1k, ns_jft_in1k, in21k_ft_in1k


@dataclass(frozen=True)
class HubFiles:
    """A repository's weight file and config.json, in the local hub cache."""

    repo_id: str
    weights: Path
    config: dict[str, Any]

    @property
    def source(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}"


@dataclass(frozen=True)
class TimmConfig:
    """What a timm config.json says about its weights, in this project's terms."""

    arch: str  # this project's variant, e.g. efficientnet_lite0
    timm_name: str  # timm's, e.g. tf_efficientnet_lite0
    trained: Trained
    num_classes: int
    labels: list[str] | None  # the config's label_names, when it has them
    imagenet: bool  # 1000 outputs of a model tagged in1k: ImageNet-1k's classes


def fetch(repo_id: str, progress: bool = True) -> HubFiles:
    """config.json and the weight file of ``repo_id``, downloaded once into the hub cache (or found
    there offline); ModelLoadError says in one line why not."""
    source = f"{HUB_PREFIX}{repo_id}"
    config_path = _download(repo_id, HUB_CONFIG, progress)
    if config_path is None:
        raise ModelLoadError(f"{source} has no {HUB_CONFIG}: not a timm model repository; download its weight "
                             "file and pass --pretrained FILE")
    for name in WEIGHT_FILES:
        weights = _download(repo_id, name, progress)
        if weights is not None:
            return HubFiles(repo_id, weights, _read_json(config_path, source))
    raise ModelLoadError(f"{source} has neither {' nor '.join(WEIGHT_FILES)}")


def _download(repo_id: str, filename: str, progress: bool) -> Path | None:
    """hf_hub_download of one file; None when the repository has no such file."""
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import (HFValidationError, HfHubHTTPError, LocalEntryNotFoundError,
                                            RemoteEntryNotFoundError, RepositoryNotFoundError)
        from huggingface_hub.utils import silent_tqdm
    except ImportError:
        raise ModelLoadError("hf-hub: weights need huggingface_hub: pip install huggingface_hub") from None
    source = f"{HUB_PREFIX}{repo_id}"
    try:
        return Path(hf_hub_download(repo_id, filename, tqdm_class=None if progress else silent_tqdm))
    except RemoteEntryNotFoundError:
        return None
    except LocalEntryNotFoundError:
        if filename == WEIGHT_FILES[0]:
            return None  # not cached, and the hub cannot be asked: the .bin may be cached
        missing = WEIGHT_FILES[0] if filename in WEIGHT_FILES else filename
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise ModelLoadError(f"{source}: {missing} is not in the Hugging Face cache {constants.HF_HUB_CACHE} "
                             f"and the hub cannot be reached{offline}; fetch it once with network, or set "
                             "HF_HOME to a cache that has it") from None
    except HFValidationError:
        raise _not_a_repository_id(repo_id) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"{source}: no such model repository on the Hugging Face hub (or it is private or "
                             "gated: log in with `hf auth login`)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(f"cannot download {source} ({str(exc).splitlines()[0] if str(exc) else exc}); "
                             "fetch it where the hub can be reached and set HF_HOME to that cache") from None


def cached_config(repo_id: str) -> dict[str, Any] | None:
    """The repository's config.json when the hub cache has it (no download, no network); else None."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, HUB_CONFIG)
    except HFValidationError:
        raise _not_a_repository_id(repo_id) from None
    return _read_json(Path(found), f"{HUB_PREFIX}{repo_id}") if isinstance(found, str) else None


def _not_a_repository_id(repo_id: str) -> ModelLoadError:
    return ModelLoadError(f"{HUB_PREFIX}{repo_id} is not a repository id (OWNER/NAME, e.g. "
                          "hf-hub:timm/tf_efficientnet_lite0.in1k)")


def _read_json(path: Path, source: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{source}: {HUB_CONFIG} is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{source}: {HUB_CONFIG} holds a {type(config).__name__}, not an object")
    return config


def our_variant(timm_name: str) -> str | None:
    """timm's architecture name as this project's variant: tf_efficientnetv2_s -> efficientnet_v2_s."""
    name = timm_name.removeprefix(TF_PREFIX).replace("efficientnetv2_", "efficientnet_v2_")
    return name if name in VARIANTS else None


def read_config(config: dict[str, Any], source: str) -> TimmConfig:
    """A timm config.json (top level: architecture, num_classes, label_names; pretrained_cfg:
    input_size, crop_pct, interpolation, mean, std, tag) in this project's terms."""
    timm_name = config.get("architecture")
    if not isinstance(timm_name, str):
        raise ModelLoadError(f"{source}: {HUB_CONFIG} names no 'architecture': not a timm model repository")
    arch = our_variant(timm_name)
    if arch is None:
        raise ModelLoadError(f"{source} holds timm's {timm_name}, which is none of this project's variants "
                             f"({', '.join(VARIANTS)})")
    cfg = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    size = int((cfg.get("test_input_size") or cfg.get("input_size") or (3, VARIANTS[arch].train_size))[-1])
    crop_pct = float(cfg.get("test_crop_pct") or cfg.get("crop_pct") or TIMM_CROP_FRACTION)
    try:
        pre = Preprocess(math.floor(size / crop_pct), size, cfg.get("interpolation", "bicubic"),
                         cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{source}: unusable preprocessing in {HUB_CONFIG} ({exc})") from None
    num_classes = int(config.get("num_classes", cfg.get("num_classes", 1000)))
    labels = config.get("label_names")
    convention = TENSORFLOW if timm_name.startswith(TF_PREFIX) else TIMM
    trained = trained_as(convention, arch, f"{HUB_CONFIG}: timm's {timm_name}", pre.to_dict())
    return TimmConfig(arch, timm_name, trained, num_classes,
                      [str(v) for v in labels] if isinstance(labels, list) and len(labels) == num_classes else None,
                      num_classes == 1000 and str(cfg.get("tag", "")).endswith(IMAGENET_TAG))
