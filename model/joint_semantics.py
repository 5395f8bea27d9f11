"""DJSRH's objective (Su, Zhong & Zhang, ICCV 2019) as pure functions: no labels anywhere.

Per batch, the frozen input features of each modality give a cosine similarity matrix,
rescaled as the reference code does to ``2 cos - 1`` (so the non-negative features of a
ReLU network or a bag of words span [-1, 1], not [0, 1]). The modalities' matrices are fused,
``S~ = beta * S_media + (1 - beta) * S_text``, and the joint-semantics matrix adds the
second-order neighbourhood: ``S = mu * ((1 - eta) * S~ + eta * S~ S~^T / n)``. Codes are
``B = normalize(tanh(alpha * h))`` row by row, so ``B_x B_y^T`` are cosines, and they are
trained to reconstruct ``S`` with mean squared errors, across modalities and within each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor


def feature_similarity(features: Tensor) -> Tensor:
    """``2 cos - 1`` between every pair of rows of (n, d) features (a zero row has cos 0)."""
    unit = F.normalize(features.float(), dim=1)
    return 2 * unit @ unit.T - 1


def fused_similarity(similarities: Mapping[str, Tensor], beta: float, text: str = "text") -> Tensor:
    """``beta * S_media + (1 - beta) * S_text``; several media modalities share beta evenly.

    With only media modalities (or only text) the fusion is their plain mean.
    """
    media = [s for m, s in similarities.items() if m != text]
    if not media or text not in similarities:
        return torch.stack(list(similarities.values())).mean(0)
    return beta * torch.stack(media).mean(0) + (1 - beta) * similarities[text]


def joint_semantics(fused: Tensor, mu: float, eta: float) -> Tensor:
    """``mu * ((1 - eta) * S~ + eta * S~ S~^T / n)`` for an (n, n) fused similarity ``S~``."""
    n = fused.shape[0]
    return mu * ((1 - eta) * fused + eta * (fused @ fused.T) / n)


def normalized_codes(hidden: Tensor, alpha: float) -> Tensor:
    """Unit-length rows of ``tanh(alpha * hidden)``: their dot products are cosines."""
    return F.normalize(torch.tanh(alpha * hidden), dim=1)


def alpha_for_epoch(epoch: int) -> float:
    """The reference schedule ``sqrt(epoch + 1)`` (epochs counted from 0): tanh sharpens."""
    return float(epoch + 1) ** 0.5


def reconstruction_terms(
    codes: Mapping[str, Tensor],
    target: Tensor,
    intra_weights: Mapping[str, float],
) -> dict[str, Tensor]:
    """Named terms: ``mse(B_x B_y^T, S)`` per pair of modalities, ``mse(B_x B_x^T, S)`` per one.

    ``total`` sums the cross-modal terms with weight 1 and each intra-modal term with its
    weight (the reference's lambda1 for the image, lambda2 for the text); a weight 0 skips it.
    """
    terms: dict[str, Tensor] = {}
    total = target.new_zeros(())
    names: Sequence[str] = list(codes)
    for a, b in combinations(names, 2):
        term = F.mse_loss(codes[a] @ codes[b].T, target)
        terms[f"cross/{a}-{b}"] = term
        total = total + term
    for m in names:
        weight = intra_weights.get(m, 0.0)
        if weight:
            term = F.mse_loss(codes[m] @ codes[m].T, target)
            terms[f"intra/{m}"] = term
            total = total + weight * term
    terms["total"] = total
    return terms
