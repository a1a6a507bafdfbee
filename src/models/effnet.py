"""EfficientNet B0–B7 (Tan & Le, 2019), EfficientNet-Lite0–4 (Google, 2020) and EfficientNetV2-S/M/L
(Tan & Le, 2021).

The networks are written from the papers' stage tables, held here as data. The module layout
(``features`` / ``avgpool`` / ``classifier``) and every parameter name and shape equal
torchvision's models of the same name, so their released ImageNet weights load with
``strict=True`` and weights trained here load into torchvision. Lite, which torchvision lacks,
follows the same naming scheme.

``build_model(name, padding="same")`` pads like TensorFlow ("SAME"), as Google's checkpoints
need; the default ``"symmetric"`` is PyTorch's, as torchvision's weights need. The table holds
architecture facts only; what each set of published weights needs (padding, eval preprocessing,
accuracy, source) is in src.models.weights.
"""

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from src.common.errors import InputError

from .layers import PADDINGS, ConvBNAct, FusedMBConv, MBConv, make_divisible

BN_EPS_TORCH = 1e-5  # PyTorch's default, used by torchvision's B0–B4 weights
BN_EPS_TF = 1e-3  # TensorFlow's, used by the ported B5–B7 and by all V2 weights
BN_MOMENTUM_TORCH = 0.1
BN_MOMENTUM_TF = 0.01  # TF's decay 0.99 in PyTorch's convention (1 - decay)
NETWORK_STRIDE = 32  # stem + four stride-2 stages: inputs up to 32 px end in a 1x1 feature map
DROP_PATH_RATE = 0.2  # stochastic depth survival falls linearly to 0.8 at the last block
LITE_STEM_CHANNELS = 32  # Lite keeps stem and head at B0's widths at every scale (fix_head_stem)
LITE_HEAD_CHANNELS = 1280
ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu6": nn.ReLU6}


@dataclass(frozen=True)
class Stage:
    """One row of a paper's stage table: ``repeats`` blocks of one kind."""

    block: str  # "mbconv" or "fused"
    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


# EfficientNet paper, Table 1 (B0). Widths and depths of B1–B7 follow by compound scaling.
B0_STAGES = (
    Stage("mbconv", 1, 3, 1, 32, 16, 1),
    Stage("mbconv", 6, 3, 2, 16, 24, 2),
    Stage("mbconv", 6, 5, 2, 24, 40, 2),
    Stage("mbconv", 6, 3, 2, 40, 80, 3),
    Stage("mbconv", 6, 5, 1, 80, 112, 3),
    Stage("mbconv", 6, 5, 2, 112, 192, 4),
    Stage("mbconv", 6, 3, 1, 192, 320, 1),
)

# EfficientNetV2 paper, Table 4 (S) and the released M/L configurations; not compound-scaled.
V2_S_STAGES = (
    Stage("fused", 1, 3, 1, 24, 24, 2),
    Stage("fused", 4, 3, 2, 24, 48, 4),
    Stage("fused", 4, 3, 2, 48, 64, 4),
    Stage("mbconv", 4, 3, 2, 64, 128, 6),
    Stage("mbconv", 6, 3, 1, 128, 160, 9),
    Stage("mbconv", 6, 3, 2, 160, 256, 15),
)
V2_M_STAGES = (
    Stage("fused", 1, 3, 1, 24, 24, 3),
    Stage("fused", 4, 3, 2, 24, 48, 5),
    Stage("fused", 4, 3, 2, 48, 80, 5),
    Stage("mbconv", 4, 3, 2, 80, 160, 7),
    Stage("mbconv", 6, 3, 1, 160, 176, 14),
    Stage("mbconv", 6, 3, 2, 176, 304, 18),
    Stage("mbconv", 6, 3, 1, 304, 512, 5),
)
V2_L_STAGES = (
    Stage("fused", 1, 3, 1, 32, 32, 4),
    Stage("fused", 4, 3, 2, 32, 64, 7),
    Stage("fused", 4, 3, 2, 64, 96, 7),
    Stage("mbconv", 4, 3, 2, 96, 192, 10),
    Stage("mbconv", 6, 3, 1, 192, 224, 19),
    Stage("mbconv", 6, 3, 2, 224, 384, 25),
    Stage("mbconv", 6, 3, 1, 384, 640, 7),
)
V2_HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class VariantSpec:
    """An architecture: its stage table, compound scaling, regularisation and normalisation layers.

    ``train_size`` is the paper's resolution. ``bn_eps`` / ``bn_momentum`` are what the network is
    built with by default (torchvision's builders: PyTorch's for B0–B4, TensorFlow's for the rest).
    What one set of weights needs and claims (padding, eps, eval preprocessing, published accuracy)
    is in src.models.weights, one entry per weight source.
    """

    name: str
    stages: tuple[Stage, ...]
    width_mult: float
    depth_mult: float
    dropout: float
    bn_eps: float
    bn_momentum: float
    train_size: int
    head_channels: int | None = None  # None: 4 × the last stage's width (V1)
    activation: str = "silu"  # a key of ACTIVATIONS; Lite uses ReLU6 (quantisation-friendly)
    se: bool = True  # squeeze-and-excitation in MBConv blocks (Lite drops it)
    fixed_stem_head: bool = False  # Lite: stem 32 / head 1280 and first/last stage depth not scaled


def _v1(name: str, width: float, depth: float, dropout: float, train: int, tf_bn: bool = False) -> VariantSpec:
    return VariantSpec(
        name=name,
        stages=B0_STAGES,
        width_mult=width,
        depth_mult=depth,
        dropout=dropout,
        bn_eps=BN_EPS_TF if tf_bn else BN_EPS_TORCH,
        bn_momentum=BN_MOMENTUM_TF if tf_bn else BN_MOMENTUM_TORCH,
        train_size=train,
    )


def _v2(name: str, stages: tuple[Stage, ...], dropout: float, train: int) -> VariantSpec:
    return VariantSpec(
        name=name,
        stages=stages,
        width_mult=1.0,
        depth_mult=1.0,
        dropout=dropout,
        bn_eps=BN_EPS_TF,
        bn_momentum=BN_MOMENTUM_TORCH,
        train_size=train,
        head_channels=V2_HEAD_CHANNELS,
    )


def _lite(name: str, width: float, depth: float, size: int, dropout: float) -> VariantSpec:
    """Google's efficientnet/lite builder: B0's table, ReLU6, no SE, fixed stem and head."""
    return VariantSpec(
        name=name,
        stages=B0_STAGES,
        width_mult=width,
        depth_mult=depth,
        dropout=dropout,
        bn_eps=BN_EPS_TF,
        bn_momentum=BN_MOMENTUM_TORCH,
        train_size=size,
        head_channels=LITE_HEAD_CHANNELS,
        activation="relu6",
        se=False,
        fixed_stem_head=True,
    )


# One line per variant: width, depth, dropout, resolution (EfficientNet paper Table 2 / torchvision's
# builders; V2 paper and its released configurations; Google's efficientnet/lite builder).
VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        _v1("efficientnet_b0", 1.0, 1.0, 0.2, 224),
        _v1("efficientnet_b1", 1.0, 1.1, 0.2, 240),
        _v1("efficientnet_b2", 1.1, 1.2, 0.3, 260),
        _v1("efficientnet_b3", 1.2, 1.4, 0.3, 300),
        _v1("efficientnet_b4", 1.4, 1.8, 0.4, 380),
        _v1("efficientnet_b5", 1.6, 2.2, 0.4, 456, tf_bn=True),
        _v1("efficientnet_b6", 1.8, 2.6, 0.5, 528, tf_bn=True),
        _v1("efficientnet_b7", 2.0, 3.1, 0.5, 600, tf_bn=True),
        _v2("efficientnet_v2_s", V2_S_STAGES, 0.2, 300),
        _v2("efficientnet_v2_m", V2_M_STAGES, 0.3, 384),
        _v2("efficientnet_v2_l", V2_L_STAGES, 0.4, 384),
        # Lite: width, depth, resolution, dropout.
        _lite("efficientnet_lite0", 1.0, 1.0, 224, 0.2),
        _lite("efficientnet_lite1", 1.0, 1.1, 240, 0.2),
        _lite("efficientnet_lite2", 1.1, 1.2, 260, 0.3),
        _lite("efficientnet_lite3", 1.2, 1.4, 280, 0.3),
        _lite("efficientnet_lite4", 1.4, 1.8, 300, 0.3),
    )
}
def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, in table order."""
    return list(VARIANTS)


def get_variant(name: str) -> VariantSpec:
    """The spec of a variant; an unknown name is an InputError (a ValueError) listing the valid ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise InputError(
            f"unknown model {name!r}; choose one of: {', '.join(VARIANTS)}"
        ) from None


def scale_width(channels: int, width_mult: float) -> int:
    """Compound scaling of a stage's width, rounded to a multiple of 8."""
    return make_divisible(channels * width_mult)


def scale_depth(repeats: int, depth_mult: float) -> int:
    """Compound scaling of a stage's depth, rounded up so no stage loses a block."""
    return int(math.ceil(repeats * depth_mult))


def scaled_stages(spec: VariantSpec) -> list[Stage]:
    """The variant's stage table after compound scaling (V2 tables are used as they are).

    Lite (``fixed_stem_head``) keeps the first stage's input at the unscaled 32-channel stem and
    the first and last stages at one block, as Google's lite builder does.
    """
    if spec.stages is not B0_STAGES:
        return list(spec.stages)
    last = len(spec.stages) - 1
    stages = []
    for i, s in enumerate(spec.stages):
        fixed_depth = spec.fixed_stem_head and i in (0, last)
        stages.append(replace(
            s,
            in_channels=scale_width(s.in_channels, spec.width_mult),
            out_channels=scale_width(s.out_channels, spec.width_mult),
            repeats=s.repeats if fixed_depth else scale_depth(s.repeats, spec.depth_mult),
        ))
    if spec.fixed_stem_head:
        stages[0] = replace(stages[0], in_channels=LITE_STEM_CHANNELS)
    return stages


BLOCKS = {"mbconv": MBConv, "fused": FusedMBConv}


@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """During a checkpointed stage's recomputation, keep BN running statistics untouched.

    Recomputing a stage's forward in backward would otherwise update each BN's running
    mean/var (and its batch counter) a second time, making checkpointed training differ from
    the plain path.
    """
    saved = []
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.training and bn.track_running_stats:
            count = None if bn.num_batches_tracked is None else bn.num_batches_tracked.clone()
            saved.append((bn, bn.momentum, count))
            bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, momentum, count in saved:
            bn.momentum = momentum
            if count is not None:
                bn.num_batches_tracked.copy_(count)


class EfficientNet(nn.Module):
    """Stem conv → stages of (Fused-)MBConv blocks → 1×1 head conv → pool → dropout → linear."""

    def __init__(
        self,
        spec: VariantSpec,
        num_classes: int = 1000,
        dropout: float | None = None,
        drop_path_rate: float = DROP_PATH_RATE,
        in_channels: int = 3,
        bn_eps: float | None = None,
        bn_momentum: float | None = None,
        padding: str = "symmetric",
    ) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}")
        self.variant = spec
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.grad_checkpointing = False
        self.padding = padding
        self.bn_eps = spec.bn_eps if bn_eps is None else bn_eps
        norm = dict(
            bn_eps=self.bn_eps,
            bn_momentum=spec.bn_momentum if bn_momentum is None else bn_momentum,
            activation=ACTIVATIONS[spec.activation],
            padding=padding,
        )
        stages = scaled_stages(spec)
        layers: list[nn.Module] = [
            ConvBNAct(in_channels, stages[0].in_channels, 3, stride=2, **norm)
        ]
        total_blocks = sum(s.repeats for s in stages)
        block_id = 0
        for stage in stages:
            blocks = []
            for i in range(stage.repeats):
                blocks.append(
                    BLOCKS[stage.block](
                        in_channels=stage.in_channels if i == 0 else stage.out_channels,
                        out_channels=stage.out_channels,
                        expand_ratio=stage.expand_ratio,
                        kernel_size=stage.kernel,
                        stride=stage.stride if i == 0 else 1,
                        drop_path=drop_path_rate * block_id / total_blocks,
                        **({"se": spec.se} if stage.block == "mbconv" else {}),
                        **norm,
                    )
                )
                block_id += 1
            layers.append(nn.Sequential(*blocks))
        head_in = stages[-1].out_channels
        self.num_features = spec.head_channels or 4 * head_in
        layers.append(ConvBNAct(head_in, self.num_features, 1, **norm))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=spec.dropout if dropout is None else dropout, inplace=True),
            nn.Linear(self.num_features, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan-out) convolutions, unit BN, and a uniform classifier, as in the TF code."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.reset_classifier()

    def reset_classifier(self, num_classes: int | None = None) -> None:
        """Re-initialise the last linear layer, optionally for a new number of classes."""
        if num_classes is not None and num_classes != self.num_classes:
            self.classifier[1] = nn.Linear(self.num_features, num_classes)
            self.num_classes = num_classes
        linear = self.classifier[1]
        init_range = 1.0 / math.sqrt(linear.out_features)
        nn.init.uniform_(linear.weight, -init_range, init_range)
        nn.init.zeros_(linear.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward instead of storing them.

        Trades roughly one extra forward pass for a large cut in activation memory, which is
        what lets B6/B7 and V2-L train on small GPUs. Results equal the plain path.
        """
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_scripting() or torch.jit.is_tracing()):
            self._check_input(x)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return self._checkpointed_features(x)
        return self.features(x)

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        """A clear error for the most common misuse, instead of a conv shape error deep inside."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.variant.name} expects input of shape (N, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )

    @torch.jit.unused
    def _checkpointed_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.features:
            x = checkpoint(
                stage,
                x,
                use_reentrant=False,
                context_fn=lambda s=stage: (contextlib.nullcontext(), _frozen_bn_stats(s)),
            )
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.forward_features(x))
        return self.classifier(torch.flatten(x, 1))


def build_model(name: str, num_classes: int = 1000, **overrides) -> EfficientNet:
    """Build a variant by name, e.g. ``build_model("efficientnet_b2", num_classes=10, dropout=0.2)``.

    ``overrides``: dropout, drop_path_rate (stochastic depth), in_channels, bn_eps, bn_momentum,
    padding ("symmetric", PyTorch's, the default; "same", TensorFlow's, for Google's checkpoints).
    """
    allowed = {"dropout", "drop_path_rate", "in_channels", "bn_eps", "bn_momentum", "padding"}
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(
            f"unknown override(s) {sorted(unknown)} for build_model; allowed: {sorted(allowed)}"
        )
    return EfficientNet(get_variant(name), num_classes=num_classes, **overrides)
