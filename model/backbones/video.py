"""Video backbones: a frozen 2-D network per frame, then temporal modelling over its maps.

The factorised (2+1)-D design: EfficientNet-Lite (ImageNet weights, frozen) turns every
frame into a C x h x w feature map; the trainable part sees the clip as a (C, T, h, w)
volume. `Conv3dTemporal` reduces channels with a 1x1x1 convolution and stacks residual
blocks of a spatial (1x3x3) and a temporal (3x1x1) convolution, then pools space fully and
time into a few ordered bins, so "appears then vanishes" and its reverse stay apart.
`FrameMean` is the 2-D baseline: the mean of per-frame pooled features, blind to order.
"""

from __future__ import annotations

import torch
from torch import nn

from model.backbones.efficientnet import EfficientNetLite

TEMPORAL = ("conv3d", "mean")


class FrameMaps(nn.Module):
    """Per-frame final feature maps of the (frozen) 2-D trunk: (n, 3, s, s) -> (n, C, h, w)."""

    def __init__(self, trunk: EfficientNetLite) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.feature_map(x)


def clip_map_shape(
    backbone: str, size: int, frames: int, clips: int
) -> tuple[int, int, int, int, int]:
    """(clips, frames, C, h, w): the per-frame maps of one video sampled this way."""
    with torch.random.fork_rng(), torch.no_grad():  # the architecture fixes it; keep the RNG
        out = EfficientNetLite(backbone).eval().feature_map(torch.zeros(1, 3, size, size))
    return clips, frames, int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


class _FactorisedBlock(nn.Module):
    """Residual (2+1)-D block: spatial 1x3x3 then temporal 3x1x1 convolution."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.spatial = nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.temporal = nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0), bias=False)
        self.bn2 = nn.BatchNorm3d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.spatial(x)))
        return torch.relu(x + self.bn2(self.temporal(out)))


class Conv3dTemporal(nn.Module):
    """(N, C, T, h, w) maps -> 1x1x1 reduction -> (2+1)-D blocks -> (N, width * bins)."""

    def __init__(self, channels: int, width: int, blocks: int, bins: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv3d(channels, width, 1, bias=False), nn.BatchNorm3d(width), nn.ReLU()
        )
        self.blocks = nn.Sequential(*[_FactorisedBlock(width) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool3d((bins, 1, 1))
        self.out_dim = width * bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.reduce(x))).flatten(1)


class FrameMean(nn.Module):
    """The 2-D baseline: (N, C, T, h, w) -> mean over time and space -> (N, C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3, 4))


def build_temporal(kind: str, channels: int, width: int, blocks: int, bins: int) -> nn.Module:
    """The configured temporal model over per-frame maps."""
    if kind == "conv3d":
        return Conv3dTemporal(channels, width, blocks, bins)
    if kind == "mean":
        return FrameMean(channels)
    raise ValueError(f"unknown video.temporal {kind!r}; choose one of {', '.join(TEMPORAL)}")
