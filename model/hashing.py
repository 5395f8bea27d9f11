"""Hash and label heads, and the pieces every exported encoder shares.

Training uses tanh codes so gradients flow; encoding uses their sign. Packed codes are
uint8 with bits/8 bytes per item, most significant bit first (`np.packbits` order).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class PixelNormalize(nn.Module):
    """uint8 (n, 3, h, w) pixels -> normalised float, so encoders take raw pixels."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() - self.mean) / self.std


class HashHead(nn.Module):
    """Linear projection to `bits` continuous codes in (-1, 1).

    `beta` sharpens the tanh as training proceeds (HashNet's continuation), so the
    continuous codes the losses see approach the signs used at encoding time.
    """

    def __init__(self, in_dim: int, bits: int) -> None:
        super().__init__()
        if bits % 8 or not 8 <= bits <= 1024:
            raise ValueError(f"bits must be a multiple of 8 between 8 and 1024, got {bits}")
        self.bits = bits
        self.proj = nn.Linear(in_dim, bits)
        self.register_buffer("beta", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.beta * self.proj(x))


class LabelHead(nn.Module):
    """Classifier on the codes: DSMHN's semantic-label-preserving branch."""

    def __init__(self, bits: int, num_labels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(bits, num_labels)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.fc(codes)


def pack_bits(codes: torch.Tensor) -> torch.Tensor:
    """Sign of continuous codes packed MSB-first into uint8 (n, bits/8); 0 counts as +1."""
    bits = (codes >= 0).to(torch.uint8).view(codes.shape[0], -1, 8)
    # Shifts by Python ints, not a weight tensor: a traced encoder would keep that tensor's
    # device as a constant and fail when loaded onto another device.
    packed = bits[..., 0] << 7
    for i in range(1, 8):
        packed = packed | (bits[..., i] << (7 - i))
    return packed


def signs(codes: np.ndarray) -> np.ndarray:
    """±1 int8 codes from continuous ones (0 counts as +1), matching `pack_bits`."""
    return np.where(codes >= 0, 1, -1).astype(np.int8)
