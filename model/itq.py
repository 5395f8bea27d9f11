"""Iterative quantisation (ITQ; Gong & Lazebnik, CVPR 2011): unsupervised codes of features.

PCA to `bits` dimensions, then an orthogonal rotation R alternately fitted so that sign(V R)
loses as little as possible of V R. Computed in float64 on the CPU: the same codes on every
device.
"""

from __future__ import annotations

import torch
from torch import Tensor


def itq_codes(features: Tensor, bits: int, iterations: int, seed: int) -> Tensor:
    """±1 float codes (n, bits) of `features` (n, d), d >= bits; L2-normalised rows, centred."""
    x = features.detach().to("cpu", torch.float64)
    n, d = x.shape
    if bits > min(n, d):
        raise ValueError(
            f"ITQ gives at most min(items, feature dimensions) = {min(n, d)} bits, not {bits}"
        )
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    x = x - x.mean(dim=0)
    # The top `bits` principal directions (eigh sorts eigenvalues ascending).
    _, vectors = torch.linalg.eigh(x.T @ x)
    v = x @ vectors[:, -bits:].flip(1)
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(bits, bits, generator=generator, dtype=x.dtype))
    for _ in range(iterations):
        b = signs(v @ rotation)
        # max tr(B^T V R) over orthogonal R: R = U W^T for V^T B = U S W^T.
        u, _, wt = torch.linalg.svd(v.T @ b)
        rotation = u @ wt
    return signs(v @ rotation).float()


def signs(x: Tensor) -> Tensor:
    """±1 of `x` in its dtype, 0 counting as +1 (as model.hashing.pack_bits does)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
