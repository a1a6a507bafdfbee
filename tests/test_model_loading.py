"""src/models/loading.py: train.py checkpoints and plain state_dicts load exactly, mismatches name the
fix, published weights skip the download when the class count is already wrong, and eval overrides
keep the resize/crop ratio. Both entry points turn these errors into one ``error:`` line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import eval as eval_entry
import export as export_entry
from src.models.files import CheckpointError
from src.models.loading import ModelLoadError, classifier_size, load_published, load_trained, variant_name
from src.models.preprocessing import resolve_preprocess
from src.models import WeightMismatchError, build_model
from src.models.weights import INCEPTION_MEAN, INCEPTION_STD, default_preprocess
from src.common.preprocess import Preprocess
from tests.helpers_data import make_image_folder

NAME = "efficientnet_b0"
CLASSES = ["cat", "dog", "eel"]
SAVED_PRE = Preprocess(110, 96, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
B0 = default_preprocess(NAME)  # 256 -> 224 bicubic


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A 3-class B0 saved as a train.py checkpoint, as a plain state_dict, and a tiny image folder."""
    tmp = tmp_path_factory.mktemp("loading")
    torch.manual_seed(0)
    state = build_model(NAME, num_classes=len(CLASSES)).state_dict()
    torch.save({"model": state, "model_name": NAME, "num_classes": 3, "classes": CLASSES,
                "preprocess": SAVED_PRE.to_dict()}, tmp / "ckpt.pth")
    torch.save({"model": state, "model_name": NAME, "classes": ["cat", "dog"]}, tmp / "two_names.pth")
    torch.save(state, tmp / "plain.pth")
    make_image_folder(tmp / "data", classes=3, per_class=1, size=(36, 36))
    return {"tmp": tmp, "state": state, "ckpt": tmp / "ckpt.pth", "plain": tmp / "plain.pth",
            "two_names": tmp / "two_names.pth", "data": tmp / "data"}


def assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_train_checkpoint_is_self_describing(files):
    loaded = load_trained(str(files["ckpt"]))
    assert (loaded.name, loaded.num_classes, loaded.classes) == (NAME, 3, CLASSES)
    assert loaded.preprocess == SAVED_PRE and loaded.source == str(files["ckpt"])
    assert not loaded.model.training
    assert_same_weights(loaded.model, files["state"])


def test_plain_state_dict_needs_the_variant_and_takes_classes_from_the_classifier(files):
    with pytest.raises(ModelLoadError, match="plain state_dict without a model name: pass --model NAME"):
        load_trained(str(files["plain"]))
    for loaded in (load_trained(str(files["plain"]), NAME), load_published(NAME, str(files["plain"]))):
        assert (loaded.name, loaded.num_classes, loaded.classes, loaded.preprocess) == (NAME, 3, None, None)
        assert_same_weights(loaded.model, files["state"])


@pytest.mark.parametrize("call,error,message", [
    (lambda f: load_trained(str(f["ckpt"]), "efficientnet_b1", model_origin="config key 'model'"),
     ModelLoadError, "holds efficientnet_b0 weights but config key 'model' is efficientnet_b1"),
    (lambda f: load_trained(str(f["plain"]), "efficientnet_b1"), WeightMismatchError, "does not fit efficientnet_b1"),
    (lambda f: load_trained(str(f["ckpt"]), class_num=10), ModelLoadError,
     "has 3 classes but the config's class_num is 10"),
    (lambda f: load_trained(str(f["two_names"])), ModelLoadError, "lists 2 class names but its classifier has 3"),
    (lambda f: load_trained(str(f["ckpt"]), use_ema=True), ModelLoadError, "no EMA weights .*drop --use_ema"),
    (lambda f: load_trained(str(f["tmp"] / "nope.pth")), CheckpointError, "checkpoint not found"),
    (lambda f: variant_name("efficientnet_b9", "unused"), ModelLoadError, "unknown model 'efficientnet_b9'"),
    (lambda f: classifier_size({"fc.weight": torch.zeros(3, 4)}, "w.pth"), ModelLoadError, "no 'classifier.1.weight'"),
])
def test_mismatches_raise_a_named_error(files, call, error, message):
    with pytest.raises(error, match=message):
        call(files)


def test_published_weights_check_class_num_before_downloading_and_explain_failures(monkeypatch):
    calls = []

    def offline(url, **kwargs):
        calls.append(url)
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ModelLoadError, match="1000 classes but the config's class_num is 3"):
        load_published(NAME, "imagenet", class_num=3)
    assert calls == []
    with pytest.raises(ModelLoadError, match=r"cannot download torchvision efficientnet_b0 IMAGENET1K_V1 "
                                             r"\(no network\); fetch https://\S+ by hand and pass --pretrained PATH"):
        load_published(NAME, "imagenet")
    assert len(calls) == 1
    published = build_model(NAME).state_dict()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kwargs: published)
    for word in ("IMAGENET1K_V1", "true", "ImageNet"):  # one vocabulary: every spelling is the published weights
        loaded = load_published(NAME, word)
        assert (loaded.num_classes, loaded.source) == (1000, "torchvision efficientnet_b0 IMAGENET1K_V1")


def test_eval_overrides_keep_the_resize_crop_ratio_when_one_is_given():
    assert resolve_preprocess(NAME) == B0
    assert resolve_preprocess(NAME, image_size=32) == Preprocess(37, 32, "bicubic", B0.mean, B0.std)
    assert resolve_preprocess(NAME, SAVED_PRE, image_size=32) == SAVED_PRE  # the weights' own settings win
    assert (resolve_preprocess(NAME, crop=32).resize, resolve_preprocess(NAME, resize=73).crop) == (37, 64)
    both = resolve_preprocess(NAME, resize=50, crop=40, interpolation="bilinear", normalization="inception")
    assert both == Preprocess(50, 40, "bilinear", INCEPTION_MEAN, INCEPTION_STD)
    assert resolve_preprocess(NAME, SAVED_PRE, normalization="variant").mean == SAVED_PRE.mean
    with pytest.raises(ModelLoadError, match="normalization must be one of variant, imagenet, inception"):
        resolve_preprocess(NAME, normalization="caffe")
    with pytest.raises(ModelLoadError, match="Preprocess.interpolation must be one of"):
        resolve_preprocess(NAME, interpolation="cubic")


@pytest.mark.parametrize("argv", [["--model", "efficientnet_b1"], ["--use_ema"]])
def test_both_entry_points_print_one_error_line_and_exit_2(files, capsys, argv):
    eval_code = eval_entry.main(["--checkpoint_path", str(files["ckpt"]), "--dataset_path", str(files["data"]),
                                 "--device_target", "CPU", "--num_workers", "0", "--check", *argv])
    eval_err = capsys.readouterr().err
    export_code = export_entry.main(["--checkpoint_path", str(files["ckpt"]),
                                     "--file_name", str(files["tmp"] / "never"), *argv])
    export_err = capsys.readouterr().err
    for code, err in ((eval_code, eval_err), (export_code, export_err)):
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert eval_err == export_err  # one message, whichever entry point loads the file
    assert not (files["tmp"] / "never.onnx").exists()
