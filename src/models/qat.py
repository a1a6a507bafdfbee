"""Quantization-aware training (QAT) with PyTorch's own FX tooling, and its QDQ ONNX export.

``prepare_qat(model, image_size)`` turns a trained float EfficientNet into a fake-quantized one
(``torch.ao.quantization.quantize_fx.prepare_qat_fx``): conv+BN pairs are fused into QAT modules
whose BN-folded weights are fake-quantized per output channel (int8, symmetric) and every
activation is fake-quantized per tensor (uint8), so fine-tuning learns weights that survive int8.
The quantization scheme is onnxruntime's fast U8S8 one, which its QDQ int8 kernels run.

``fold_for_export(qat_model)`` freezes the observers and replaces each fused conv+BN QAT module
by a plain convolution holding the BN-folded weight already on its int8 grid (and returns each
grid): the numbers the QAT model computes in eval mode, in the layout src/export/qat_onnx.py writes as
int8 initializers + DequantizeLinear, which onnxruntime fuses into integer kernels. The
activation quantizers stay; the TorchScript ONNX exporter writes each as a QuantizeLinear/
DequantizeLinear pair.

``post_training_quantize`` runs the same network without training (observers + bias correction):
export.py's default int8 path.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn import qat as nnqat
from torch.ao.nn.intrinsic import qat as nniqat
from torch.ao.nn.intrinsic.qat import freeze_bn_stats
from torch.ao.quantization import (
    FakeQuantize, FixedQParamsFakeQuantize, FixedQParamsObserver, MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver, QConfig, QConfigMapping, disable_observer, enable_observer,
)
from torch.ao.quantization.quantize_fx import prepare_qat_fx

from src.models.layers import Conv2dSame, StochasticDepth, same_padding

QAT_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear
QAT_KEY = "qat"  # a QAT checkpoint's entry: {"image_size": N}, the size its static SAME pads were built for
RELU6_MAX = 6.0


def qat_qconfig() -> QConfig:
    """uint8 per-tensor activations and int8 per-channel symmetric weights (onnxruntime's U8S8)."""
    activation = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
        qscheme=torch.per_tensor_affine)
    # [-127, 127], as onnxruntime's symmetric weights: a channel's largest weight lands on 127 exactly
    # (with -128 it would sit on 127.5, where float rounding decides which way it goes).
    weight = FakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver, quant_min=-127, quant_max=127, dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric, ch_axis=0)
    return QConfig(activation=activation, weight=weight)


class _Classifier(nn.Module):
    """EfficientNet's forward without its input check, which FX cannot trace; same parameter names."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.features, self.avgpool, self.classifier = model.features, model.avgpool, model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class _StaticSameConv(nn.Module):
    """TensorFlow SAME padding for one known input size, then the conv: constant pads FX can trace.
    The conv stays a child named ``conv`` so FX fuses it with the BatchNorm that follows."""

    def __init__(self, pads: tuple[int, int, int, int], conv: nn.Conv2d) -> None:
        super().__init__()
        self.pads, self.conv = pads, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pads))


def _static_same_padding(model: nn.Module, image_size: int) -> None:
    """Replace every :class:`Conv2dSame` by constant pads + a plain conv, for inputs of ``image_size``."""
    sizes: dict[nn.Module, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: sizes.__setitem__(m, tuple(a[0].shape[-2:])))
             for m in model.modules() if isinstance(m, Conv2dSame)]
    if not hooks:
        return
    was_training = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    model.train(was_training)
    for h in hooks:
        h.remove()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv2dSame):
                (h, w), k, s = sizes[child], child.kernel_size, child.stride
                top, bottom = same_padding(h, k[0], s[0])
                left, right = same_padding(w, k[1], s[1])
                conv = nn.Conv2d(child.in_channels, child.out_channels, k, s, 0, groups=child.groups,
                                 bias=child.bias is not None)
                conv.load_state_dict(child.state_dict())
                setattr(parent, name, _StaticSameConv((left, right, top, bottom), conv))


def prepare_qat(model: nn.Module, image_size: int) -> torch.fx.GraphModule:
    """A fake-quantized copy of a float EfficientNet for QAT at ``image_size`` (train mode)."""
    model = copy.deepcopy(model).cpu()
    for module in model.modules():  # FX bakes Python branches in: no stochastic depth in QAT fine-tuning
        if isinstance(module, StochasticDepth):
            module.p = 0.0
    _static_same_padding(model, image_size)
    net = _Classifier(model).train()
    example = (torch.zeros(2, 3, image_size, image_size),)
    with warnings.catch_warnings():  # torch.ao's deprecation notice for the FX workflow
        warnings.simplefilter("ignore")
        prepared = prepare_qat_fx(net, QConfigMapping().set_global(qat_qconfig()), example)
    return _relu6_as_quantizer_range(prepared)


class ReLU6Quantizer(FixedQParamsFakeQuantize):
    """uint8 over exactly [0, 6]: quantizing onto this grid clips as ReLU6 does; with fake
    quantization off (the float reference) it is ReLU6 itself."""

    def __init__(self) -> None:
        super().__init__(observer=FixedQParamsObserver.with_args(
            scale=RELU6_MAX / 255, zero_point=0, dtype=torch.quint8, quant_min=0, quant_max=255))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.fake_quant_enabled[0] == 1 else torch.clamp(x, 0.0, RELU6_MAX)


def _relu6_as_quantizer_range(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """conv → quantize → ReLU6 → quantize becomes conv → quantize onto [0, 6].

    FX cannot fuse ReLU6 into the conv (only ReLU); it quantizes the conv's unclipped output and
    lets ReLU6 share that quantizer, whose range can be 20x wider than [0, 6]: a ReLU6 network
    keeps a dozen levels where it needs 255 (measured on Lite0: 37% logit error instead of 4%). A uint8 grid over [0, 6] clips exactly as ReLU6 does, as TFLite and onnxruntime's
    fused Conv+Clip do; the exported graph then has no Clip at all.
    """
    def module(node: torch.fx.Node) -> nn.Module | None:  # named_modules() would hide shared quantizers
        return gm.get_submodule(node.target) if node.op == "call_module" else None

    for relu in list(gm.graph.nodes):
        if not isinstance(module(relu), nn.ReLU6):
            continue
        before, after = relu.args[0], list(relu.users)
        if (not isinstance(module(before), FakeQuantize) or len(before.users) != 1 or len(after) != 1
                or not isinstance(module(after[0]), FakeQuantize)):
            continue
        gm.add_submodule(before.target, ReLU6Quantizer())  # replace the conv output's quantizer
        after[0].replace_all_uses_with(before)
        gm.graph.erase_node(after[0])
        gm.graph.erase_node(relu)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


@dataclass(frozen=True)
class WeightQuant:
    """One weight tensor's int8 grid: per-output-channel scales, zero points all 0 (symmetric)."""

    scale: torch.Tensor  # (C_out,) float32
    quant_min: int
    quant_max: int

    def integers(self, weight: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (weight.dim() - 1)
        return torch.clamp(torch.round(weight / self.scale.reshape(shape)), self.quant_min, self.quant_max)


def _weight_quant(fake_quant: FakeQuantize) -> WeightQuant:
    if not torch.all(fake_quant.zero_point == 0):
        raise ValueError("QAT weights must be quantized symmetrically (zero points 0)")
    return WeightQuant(fake_quant.scale.detach().clone(), fake_quant.quant_min, fake_quant.quant_max)


def _folded_conv_weights(qat_conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) with the fused BatchNorm folded in, as the QAT module's eval forward computes."""
    weight = qat_conv.weight.detach()
    bias = qat_conv.bias.detach() if qat_conv.bias is not None else torch.zeros(qat_conv.out_channels)
    bn = getattr(qat_conv, "bn", None)
    if bn is None:
        return weight, bias
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.reshape(-1, 1, 1, 1), (bias - bn.running_mean) * scale + bn.bias.detach()


def _plain_copy(qat_module: nn.Module) -> tuple[nn.Module, WeightQuant]:
    """A float conv (ReLU appended when fused) or linear holding the fake-quantized folded weight."""
    quant = _weight_quant(qat_module.weight_fake_quant)
    if isinstance(qat_module, nn.Linear):
        weight, bias = qat_module.weight.detach(), qat_module.bias.detach()
        plain: nn.Module = nn.Linear(qat_module.in_features, qat_module.out_features)
        layer = plain
    else:
        weight, bias = _folded_conv_weights(qat_module)
        c = qat_module
        layer = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                          bias=True, padding_mode=c.padding_mode)
        plain = nn.Sequential(layer, nn.ReLU()) if isinstance(c, (nniqat.ConvBnReLU2d, nniqat.ConvReLU2d)) else layer
    shape = (-1,) + (1,) * (weight.dim() - 1)
    with torch.no_grad():
        layer.weight.copy_(quant.integers(weight) * quant.scale.reshape(shape))
        layer.bias.copy_(bias)
    return plain, quant


def fold_for_export(qat_model: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, dict[str, WeightQuant]]:
    """An eval-mode float copy of a QAT model: observers frozen, BN folded into the convs, every
    weight replaced by its fake-quantized value; and each weight's int8 grid, by parameter name.

    It computes what the int8 ONNX file computes. Activations keep their FakeQuantize modules."""
    model = copy.deepcopy(qat_model).eval()
    model.apply(disable_observer)
    grids: dict[str, WeightQuant] = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nnqat.Conv2d, nnqat.Linear, nniqat.ConvBn2d, nniqat.ConvBnReLU2d)):
            continue
        plain, grid = _plain_copy(module)
        grids[name + (".0.weight" if isinstance(plain, nn.Sequential) else ".weight")] = grid
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    return model, grids


# --------------------------------------------------------------------------------------------
# Training schedule and checkpoints
# --------------------------------------------------------------------------------------------
OBSERVER_EPOCHS = 1  # activation and weight ranges follow the data in epoch 1, then stay fixed,
#                      as torch's QAT recipe freezes observers once ranges settle


def is_qat_model(model: nn.Module) -> bool:
    return any(isinstance(m, FakeQuantize) for m in model.modules())


def prepare_for_training(model: nn.Module, image_size: int) -> torch.fx.GraphModule:
    """The QAT network of a trained float model: BatchNorm statistics frozen (the trained ones are
    better than small fine-tuning batches'), observers on."""
    qat = prepare_qat(model, image_size)
    qat.apply(freeze_bn_stats)
    qat.qat_image_size = image_size
    return qat


def checkpoint_entry(model: nn.Module) -> dict | None:
    """What a checkpoint needs to rebuild this QAT network (None for a float model)."""
    size = getattr(model, "qat_image_size", None)
    return {"image_size": int(size)} if size else None


def start_epoch(model: nn.Module, epoch: int) -> None:
    """Observers learn ranges during the first OBSERVER_EPOCHS (0-based ``epoch``), then freeze."""
    model.apply(enable_observer if epoch < OBSERVER_EPOCHS else disable_observer)


@contextlib.contextmanager
def observers_paused(*models: nn.Module) -> Iterator[None]:
    """Evaluation must not move the quantization ranges (eval() alone leaves observers running)."""
    quantizers = [m for model in models for m in model.modules() if isinstance(m, FakeQuantize)]
    saved = [int(m.observer_enabled[0]) for m in quantizers]
    for m in quantizers:
        m.disable_observer()
    try:
        yield
    finally:
        for m, on in zip(quantizers, saved):
            m.enable_observer(bool(on))


def load_for_eval(model: nn.Module, state: dict[str, torch.Tensor], image_size: int) -> torch.fx.GraphModule:
    """A QAT checkpoint's network (``model``: the float variant it was prepared from), eval mode,
    observers off: what its int8 export computes."""
    qat = prepare_for_training(model, image_size)
    qat.load_state_dict(state)
    qat.apply(disable_observer)
    return qat.eval()


# --------------------------------------------------------------------------------------------
# Post-training quantization on the same path (export.py --calib_method bias_corrected)
# --------------------------------------------------------------------------------------------
def _fused_convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nniqat.ConvBn2d, nniqat.ConvBnReLU2d))]


@torch.no_grad()
def correct_bias(model: torch.fx.GraphModule, batches: list[torch.Tensor]) -> None:
    """Empirical bias correction (Nagel et al., 2019, "Data-Free Quantization"): int8 rounding moves
    each conv output channel's mean by sum(W - Q(W)) . E[input]; add that back to the BN shift.

    Rounding errors of a depthwise filter's 9 or 25 weights do not average out, and ReLU6 inputs
    have a large mean: on Lite0 this lifted int8/fp32 top-1 agreement on out-of-distribution photos
    from 91% to 95%. ``model``: observers already calibrated and frozen."""
    convs = _fused_convs(model)
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def record(module: nn.Module, args: tuple) -> None:
        x = args[0]
        sums[module] = sums.get(module, 0) + x.double().sum((0, 2, 3))
        counts[module] = counts.get(module, 0) + x.numel() // x.shape[1]

    hooks = [conv.register_forward_pre_hook(record) for conv in convs]
    try:
        for x in batches:
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    for conv in convs:
        mean_input = (sums[conv] / counts[conv]).float()
        weight = _folded_conv_weights(conv)[0]
        error = (weight - conv.weight_fake_quant(weight)).sum((2, 3))  # (C_out, C_in / groups)
        shift = error @ mean_input if conv.groups == 1 else error[:, 0] * mean_input
        conv.bn.bias += shift


@torch.no_grad()
def post_training_quantize(model: nn.Module, image_size: int, batches: list[torch.Tensor]) -> torch.fx.GraphModule:
    """The QAT network of a trained float model with ranges observed on ``batches`` and biases
    corrected, without training: what export.py writes for --calib_method bias_corrected."""
    prepared = prepare_for_training(model, image_size).train()
    for x in batches:
        prepared(x)
    prepared.apply(disable_observer)
    prepared.eval()
    correct_bias(prepared, batches)
    return prepared
