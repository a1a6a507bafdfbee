"""The network is exactly torchvision's: same parameters, same outputs, weights move both ways."""
import copy
import os
import warnings

import numpy as np
import pytest
import torch
import torchvision

from src.models import (
    WeightMismatchError,
    build_model,
    build_pretrained,
    get_variant,
    list_models,
    load_pretrained,
)
from src.models.files import CheckpointError
from src.models.pretrained import pretrained_url
from src.models.layers import StochasticDepth
from src.models.summary import count_macs
from tests.helpers_models import assert_spread, calibrate, photo_batch

ALL = list_models()
TORCHVISION_VARIANTS = [name for name in ALL if name in torchvision.models.list_models()]

# torchvision's published parameter counts (its weight enums' `_metadata["num_params"]`).
PUBLISHED_PARAMS = {
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
    "efficientnet_v2_s": 21_458_488,
    "efficientnet_v2_m": 54_139_356,
    "efficientnet_v2_l": 118_515_272,
}
# torchvision's published GMACs ("GFLOPS" in its tables) at the weights' eval crop.
PUBLISHED_GMACS = {
    "efficientnet_b0": 0.386,
    "efficientnet_b1": 0.687,
    "efficientnet_b2": 1.088,
    "efficientnet_b3": 1.827,
    "efficientnet_b4": 4.394,
    "efficientnet_b5": 10.266,
    "efficientnet_b6": 19.068,
    "efficientnet_b7": 37.746,
    "efficientnet_v2_s": 8.366,
    "efficientnet_v2_m": 24.582,
    "efficientnet_v2_l": 56.08,
}
PUBLISHED_DROPOUT = {
    "efficientnet_b0": 0.2, "efficientnet_b1": 0.2, "efficientnet_b2": 0.3, "efficientnet_b3": 0.3,
    "efficientnet_b4": 0.4, "efficientnet_b5": 0.4, "efficientnet_b6": 0.5, "efficientnet_b7": 0.5,
    "efficientnet_v2_s": 0.2, "efficientnet_v2_m": 0.3, "efficientnet_v2_l": 0.4,
    "efficientnet_lite0": 0.2, "efficientnet_lite1": 0.2, "efficientnet_lite2": 0.3, "efficientnet_lite3": 0.3,
    "efficientnet_lite4": 0.3,
}


def _on_meta(fn):
    with torch.device("meta"):
        return fn()


def test_list_models_has_the_sixteen_variants():
    assert ALL == [f"efficientnet_b{i}" for i in range(8)] + [
        "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"
    ] + [f"efficientnet_lite{i}" for i in range(5)]


@pytest.mark.parametrize("name", TORCHVISION_VARIANTS)
def test_state_dict_keys_shapes_and_params_equal_torchvision(name):
    ours = _on_meta(lambda: build_model(name)).state_dict()
    theirs = _on_meta(lambda: torchvision.models.get_model(name)).state_dict()
    assert list(ours) == list(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    params = sum(p.numel() for p in _on_meta(lambda: build_model(name)).parameters())
    assert params == PUBLISHED_PARAMS[name]


# 12 real photos at 64 px: enough for every variant's stride 32, few enough for B7 and V2-L on CPU.
PHOTOS_64 = photo_batch(64, count=12)


# Residual branches' output gain, as in trained networks. With the initial gain of 1, B5-B7 and
# V2-M/L sum so many unit-variance branches that their logits collapse onto one direction (two
# arg-max classes) and float32 rounding alone moves B7's logits by ~3 (measured against float64);
# at 0.2 every variant spreads over 7+ classes and float32 stays within ~1e-4 of float64.
RESIDUAL_GAIN = 0.2


@torch.no_grad()
def _calibrated(build, seed: int) -> torch.nn.Module:
    """A network built with initial weights from ``seed``, its residual branches damped to
    RESIDUAL_GAIN, calibrated on the photos (eval mode)."""
    torch.manual_seed(seed)
    model = build()
    for block in model.features.modules():
        if getattr(block, "use_residual", False) or getattr(block, "use_res_connect", False):  # ours, torchvision's
            block.block[-1][1].weight.mul_(RESIDUAL_GAIN)  # the branch's last BatchNorm
    return calibrate(model, PHOTOS_64, seed=seed)


@pytest.mark.parametrize("name", TORCHVISION_VARIANTS)
def test_outputs_equal_torchvision_both_ways(name):
    with torch.no_grad():
        # torchvision's weights run in ours (built with other random weights) ...
        theirs = _calibrated(lambda: torchvision.models.get_model(name), seed=0)
        ours = build_model(name).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        expected = theirs(PHOTOS_64)
        assert_spread(expected)
        # Same operations in the same order: equal to the bit here. 1e-5 is ten times below the
        # float32 error of these logits (~1e-4 against float64), so any other order would fail.
        np.testing.assert_allclose(ours(PHOTOS_64).numpy(), expected.numpy(), atol=1e-5, rtol=0)
        # ... and ours run in a fresh torchvision model
        torch.manual_seed(1)
        fresh = torchvision.models.get_model(name).eval()
        fresh.load_state_dict(ours.state_dict(), strict=True)
        np.testing.assert_allclose(fresh(PHOTOS_64).numpy(), expected.numpy(), atol=1e-5, rtol=0)
    del theirs, ours, fresh


@pytest.mark.parametrize("name", TORCHVISION_VARIANTS)
def test_gmacs_within_two_percent_of_published(name):
    gmacs = count_macs(name) / 1e9
    assert abs(gmacs - PUBLISHED_GMACS[name]) / PUBLISHED_GMACS[name] < 0.02


@pytest.mark.parametrize("name", ALL)
def test_dropout_and_bn_settings_per_variant(name):
    model = _on_meta(lambda: build_model(name))
    assert model.classifier[0].p == PUBLISHED_DROPOUT[name]
    bn = model.features[0][1]
    spec = get_variant(name)
    assert (bn.eps, bn.momentum) == (spec.bn_eps, spec.bn_momentum)
    expected_eps = 1e-5 if name in {f"efficientnet_b{i}" for i in range(5)} else 1e-3
    assert bn.eps == expected_eps


def test_overrides_dropout_drop_path_in_channels():
    model = build_model("efficientnet_b0", num_classes=7, dropout=0.5, drop_path_rate=0.4, in_channels=1)
    assert model.classifier[0].p == 0.5
    assert model.classifier[1].out_features == 7
    assert model.features[0][0].in_channels == 1
    last_block = model.features[-2][-1]
    n_blocks = sum(len(stage) for stage in model.features[1:-1])
    assert last_block.stochastic_depth.p == pytest.approx(0.4 * (n_blocks - 1) / n_blocks)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_stochastic_depth_layer_drops_or_rescales_each_sample():
    p = 0.25
    layer = StochasticDepth(p).train()
    x = torch.randn(400, 3, 4, 4)
    torch.manual_seed(0)
    out = layer(x)
    dropped = [i for i in range(len(x)) if torch.equal(out[i], torch.zeros_like(x[i]))]
    kept = [i for i in range(len(x)) if i not in dropped]
    # dropped samples are zero, kept ones scaled by exactly 1 / (1 - p) (4/3, not 1 or 1/p)
    torch.testing.assert_close(out[kept], x[kept] * (1.0 / (1.0 - p)), atol=0, rtol=0)
    # about p of the samples are dropped (binomial(400, 0.25): 100 +- 8.7; seeded, so exact here)
    assert 100 - 4 * 8.7 < len(dropped) < 100 + 4 * 8.7
    assert torch.equal(layer.eval()(x), x)


def test_stochastic_depth_active_in_train_identity_in_eval():
    torch.manual_seed(0)
    model = build_model("efficientnet_b0", dropout=0.0, drop_path_rate=0.9)
    block = model.features[2][1]  # a residual block with a large drop probability
    keep = 1.0 - block.stochastic_depth.p
    assert block.use_residual and keep < 0.9
    x = torch.randn(16, 24, 8, 8)
    block.eval()
    with torch.no_grad():
        assert torch.equal(block(x), block.block(x) + x)
        block.train()
        branch = block.block(x)  # batch statistics: the same branch the training forward computes
        torch.manual_seed(3)
        out = block(x)
    dropped = [i for i in range(16) if torch.equal(out[i], x[i])]
    kept = [i for i in range(16) if i not in dropped]
    # per sample: some samples keep only the shortcut, the others the branch scaled by 1 / keep
    assert 0 < len(dropped) < 16
    torch.testing.assert_close(out[kept], branch[kept] * (1.0 / keep) + x[kept], atol=0, rtol=0)


def test_stochastic_depth_is_the_identity_in_eval_for_the_whole_model():
    """In eval mode a model with drop_path_rate 0.5 computes what the same weights without it do."""
    with torch.no_grad():
        model = _calibrated(lambda: build_model("efficientnet_b0", drop_path_rate=0.5), seed=0)
        plain = build_model("efficientnet_b0", drop_path_rate=0.0).eval()
        plain.load_state_dict(model.state_dict(), strict=True)
        expected = plain(PHOTOS_64)
        assert_spread(expected)
        assert torch.equal(model(PHOTOS_64), expected)
        # and in training mode the two differ: the comparison above sees stochastic depth
        torch.manual_seed(0)
        assert not torch.equal(model.train()(PHOTOS_64), plain.train()(PHOTOS_64))


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="efficientnet_b0.*efficientnet_v2_l"):
        build_model("efficientnet_b9")
    with pytest.raises(ValueError, match="unknown override"):
        build_model("efficientnet_b0", width=2.0)


def test_wrong_number_of_input_channels_is_a_clear_error():
    model = build_model("efficientnet_b0").eval()
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\), got \(1, 1, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32))


def test_mismatching_weight_file_names_key_and_shapes(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(build_model("efficientnet_b0").state_dict(), path)
    model = build_model("efficientnet_b4")
    with pytest.raises(
        WeightMismatchError,
        match=r"b0\.pth does not fit efficientnet_b4: 'features\.0\.0\.weight' has shape "
        r"\(32, 3, 3, 3\) in the file but \(48, 3, 3, 3\) in the model",
    ):
        load_pretrained(model, str(path))
    state = build_model("efficientnet_b0").state_dict()
    del state["features.1.0.block.1.fc1.bias"]
    torch.save(state, path)
    with pytest.raises(WeightMismatchError, match=r"'features\.1\.0\.block\.1\.fc1\.bias' is missing"):
        load_pretrained(build_model("efficientnet_b0"), str(path))
    with pytest.raises(CheckpointError, match="--pretrained: checkpoint not found: .*missing.pth"):
        load_pretrained(model, str(tmp_path / "missing.pth"))


def test_load_pretrained_from_file_new_classifier(tmp_path, capsys):
    torch.manual_seed(0)
    source = torchvision.models.efficientnet_b0()
    path = tmp_path / "tv_b0.pth"
    torch.save(source.state_dict(), path)
    model, weights = build_pretrained("efficientnet_b0", str(path), num_classes=10)
    assert capsys.readouterr().out == ""  # the library says nothing: the caller prints weights.notes
    assert weights.notes[-1].startswith(f"notice: loaded {path} except the classifier (1000 classes in the file, 10")
    ours = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(ours[key], value), key
    assert ours["classifier.1.weight"].shape == (10, 1280)
    assert torch.equal(ours["classifier.1.bias"], torch.zeros(10))
    # same class count: everything, classifier included, loads strictly
    full = build_model("efficientnet_b0")
    load_pretrained(full, str(path))
    assert torch.equal(full.classifier[1].weight, source.classifier[1].weight)


def test_load_pretrained_imagenet_reads_torch_hub_cache(tmp_path, monkeypatch):
    """The download path, served from torch.hub's cache so no network is needed."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = pretrained_url("efficientnet_b0")
    assert url.startswith("https://download.pytorch.org/models/efficientnet_b0")
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    cached.parent.mkdir(parents=True)
    torch.manual_seed(1)
    source = torchvision.models.efficientnet_b0()
    torch.save(source.state_dict(), cached)
    model = build_model("efficientnet_b0")
    load_pretrained(model, "imagenet", progress=False)
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)


def _train_step(model, x, y):
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_v2_s"])
def test_grad_checkpointing_equals_plain_path(name):
    torch.manual_seed(0)
    plain = build_model(name, num_classes=5, dropout=0.0).train()
    ckpt = build_model(name, num_classes=5, dropout=0.0).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_grad_checkpointing(True)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(7)  # stochastic depth draws the same masks in both runs
    loss_a, grads_a = _train_step(plain, x, y)
    torch.manual_seed(7)
    loss_b, grads_b = _train_step(ckpt, x, y)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], atol=1e-5, rtol=1e-4, msg=key)
    # BN running statistics are updated once, as in the plain path, despite the recomputation
    sa, sb = plain.state_dict(), ckpt.state_dict()
    for key in sa:
        if "running" in key or "num_batches" in key:
            torch.testing.assert_close(sb[key], sa[key], atol=1e-6, rtol=1e-5, msg=key)


def test_onnx_export_dynamic_batch_matches_pytorch(tmp_path):
    from src.export.check import DEFAULT_CHECK_TOLERANCE, compare, float64_reference

    ort = pytest.importorskip("onnxruntime")
    model = _calibrated(lambda: build_model("efficientnet_b0", num_classes=10), seed=0)
    reference64 = copy.deepcopy(model).double()  # float32's own error on these photos, to size the tolerance
    path = tmp_path / "b0.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (PHOTOS_64[:1],), str(path), dynamo=False,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, len(PHOTOS_64)):
        x = PHOTOS_64[:batch]
        with torch.no_grad():
            expected = model(x).numpy()
            exact = reference64(x.double()).numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        assert got.shape == (batch, 10)
        if batch > 1:
            assert_spread(expected)
        # onnxruntime (BN folded, other kernels) is within export.py's own rule of float64: k x max(PyTorch
        # float32's error, eps x the largest sum of |terms| of a logit) (measured 6e-5 vs 4.5e-5 here)
        ref = float64_reference(model, x)
        assert np.abs(expected - ref.ref64).max() == pytest.approx(np.abs(expected - exact).max())
        compare(got, ref, DEFAULT_CHECK_TOLERANCE, "onnxruntime")  # raises CheckFailed beyond the bound


def test_trace_and_script_are_clean_and_equal():
    model = build_model("efficientnet_b0").eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, torch.randn(1, 3, 32, 32))
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
        assert torch.allclose(scripted(x), model(x), atol=1e-6)
