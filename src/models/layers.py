"""Building blocks of EfficientNet (V1, Lite and V2).

Every module here lays out its parameters exactly like torchvision's EfficientNet so that
state_dicts move between the two with ``strict=True``: a conv-BN-activation triple is an
``nn.Sequential`` indexed ``0`` (conv), ``1`` (BN), ``2`` (activation); a block keeps its layers
in ``.block``; squeeze-and-excitation names its convolutions ``fc1`` and ``fc2``.

Padding: ``"symmetric"`` (PyTorch's, torchvision's weights) pads ``(k - 1) // 2`` on every side;
``"same"`` is TensorFlow's "SAME", which Google's checkpoints were trained with. The two agree for
stride 1; for stride 2 SAME puts the extra row and column at the bottom/right and depends on the
input size, so a strided SAME conv pads per input (:class:`Conv2dSame`). Both keep the same
parameter names, so one state_dict loads into either.
"""
import math
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

PADDINGS = ("symmetric", "same")
Activation = Callable[..., nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% below it.

    This is the channel rounding of the TF reference (and torchvision), so widths scaled by a
    compound coefficient stay hardware-friendly and match the released weights.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one spatial axis: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A strided Conv2d with TensorFlow's "SAME" padding, computed for each input's height and width.

    Exact for every input size, odd ones included; for a fixed-size ONNX export the pads become
    constants of the graph.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # traced (ONNX export): the pads are constants of the exported size
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            top, bottom = same_padding(int(x.shape[-2]), self.kernel_size[0], self.stride[0])
            left, right = same_padding(int(x.shape[-1]), self.kernel_size[1], self.stride[1])
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def make_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int,
              padding: str) -> nn.Conv2d:
    """A bias-free conv with ``padding`` ("symmetric" or "same"; they differ only when strided)."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    if padding == "same" and stride > 1:
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, groups=groups)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                     groups=groups, bias=False)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → optional activation (SiLU, or ReLU6 in Lite)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        activation: Activation | None = nn.SiLU,
        padding: str = "symmetric",
    ) -> None:
        layers: list[nn.Module] = [
            make_conv(in_channels, out_channels, kernel_size, stride, groups, padding),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class DepthwiseConvBNAct(ConvBNAct):
    """Depthwise convolution (one filter per channel) → BN → activation: the spatial mixing of MBConv."""

    def __init__(self, channels: int, kernel_size: int, stride: int, **conv: object) -> None:
        super().__init__(channels, channels, kernel_size, stride=stride, groups=channels, **conv)


class SqueezeExcitation(nn.Module):
    """Channel attention: global average → 1×1 reduce → SiLU → 1×1 expand → sigmoid gate."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The pooled tensor is (N, C, 1, 1): the two 1×1 convs are cheap; the gate costs one pass.
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class StochasticDepth(nn.Module):
    """Drop a residual branch per sample with probability ``p`` during training (Huang et al.).

    Kept samples are scaled by 1 / (1 - p) so the expectation matches evaluation, where the
    module is the identity.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"stochastic depth probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x * mask.bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _ResidualBlock(nn.Module):
    """A block's layers in ``.block``, plus the residual (with stochastic depth) when shapes allow.

    The residual is used when stride is 1 and the channel count is unchanged.
    """

    def __init__(
        self, layers: list[nn.Module], in_channels: int, out_channels: int, stride: int, drop_path: float
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop_path)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_residual:
            out = self.stochastic_depth(out) + x
        return out


class MBConv(_ResidualBlock):
    """Mobile inverted bottleneck: 1×1 expand → depthwise k×k → SE → 1×1 linear projection.

    With expand ratio 1 the expansion conv is omitted, as in the paper. The SE bottleneck is a
    quarter of the block's *input* channels; Lite (``se=False``) has none, for phone accelerators.
    ``conv``: bn_eps, bn_momentum, activation and padding of every conv-BN pair.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: float,
        kernel_size: int,
        stride: int,
        drop_path: float,
        se: bool = True,
        **conv: object,
    ) -> None:
        expanded = make_divisible(in_channels * expand_ratio)
        linear = {**conv, "activation": None}
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNAct(in_channels, expanded, 1, **conv))
        layers.append(DepthwiseConvBNAct(expanded, kernel_size, stride, **conv))
        if se:
            layers.append(SqueezeExcitation(expanded, max(1, in_channels // 4)))
        layers.append(ConvBNAct(expanded, out_channels, 1, **linear))
        super().__init__(layers, in_channels, out_channels, stride, drop_path)


class FusedMBConv(_ResidualBlock):
    """EfficientNetV2's early-stage block: the expand and depthwise convs fused into one k×k conv.

    Regular convolutions use accelerators better than depthwise ones at high resolution, which
    is why V2 uses this block in its first stages. No squeeze-and-excitation here.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: float,
        kernel_size: int,
        stride: int,
        drop_path: float,
        se: bool = False,
        **conv: object,
    ) -> None:
        if se:
            raise ValueError("FusedMBConv has no squeeze-and-excitation")
        expanded = make_divisible(in_channels * expand_ratio)
        if expanded != in_channels:
            layers: list[nn.Module] = [
                ConvBNAct(in_channels, expanded, kernel_size, stride, **conv),
                ConvBNAct(expanded, out_channels, 1, **{**conv, "activation": None}),
            ]
        else:
            layers = [ConvBNAct(in_channels, out_channels, kernel_size, stride, **conv)]
        super().__init__(layers, in_channels, out_channels, stride, drop_path)
