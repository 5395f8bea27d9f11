"""Training losses: pure functions and modules over codes, labels and similarities.

Each returns a scalar tensor so methods can combine them freely (DSMHN's objective,
model.methods.dsmhn, weights them into named terms and their "total").

Codes are the continuous tanh outputs of the hash layers, shape (n, bits).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SIMILARITY_LOSSES",
    "ContrastiveLoss",
    "PairwiseNLLLoss",
    "TieAwareAPLoss",
    "TripletLoss",
    "bit_balance_loss",
    "code_distance",
    "code_fit_loss",
    "label_similarity",
    "make_similarity_loss",
    "quantization_loss",
    "semantic_label_loss",
    "structured_margin_loss",
    "tie_aware_average_precision",
]


def label_similarity(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """Return s (n, m) with 1 where items share at least one label, else 0."""
    dtype = labels_a.dtype if labels_a.is_floating_point() else torch.get_default_dtype()
    # Cast before the matmul: integer matmul is unsupported on CUDA, and bool has none.
    shared = labels_a.to(dtype) @ labels_b.to(dtype).T
    return (shared > 0).to(dtype)


def code_distance(u: Tensor, v: Tensor) -> Tensor:
    """Return the normalised Hamming-like distance (bits - u.v) / (2 bits), in [0, 1]."""
    bits = u.shape[1]
    # For codes in {-1, 1}^bits this is exactly Hamming distance / bits.
    return (bits - u @ v.T) / (2 * bits)


def _check_pair(u: Tensor, v: Tensor, s: Tensor) -> None:
    if u.dim() != 2 or v.dim() != 2 or u.shape[1] != v.shape[1]:
        raise ValueError(
            f"codes must be (n, bits) and (m, bits); got {tuple(u.shape)} and {tuple(v.shape)}"
        )
    if s.shape != (u.shape[0], v.shape[0]):
        raise ValueError(f"similarity must be ({u.shape[0]}, {v.shape[0]}); got {tuple(s.shape)}")


class PairwiseNLLLoss(nn.Module):
    """Negative log-likelihood of pairwise similarity under p(s=1) = sigmoid(alpha u.v)."""

    def __init__(self, alpha: float = 0.5, balance: bool = False) -> None:
        super().__init__()
        # alpha = 0.5 follows DCMH. |theta| can reach alpha * bits (32 at 64 bits); softplus
        # keeps that numerically stable, but the sigmoid saturates sooner as bits grow, so
        # for long codes a smaller alpha (e.g. 16 / bits) keeps gradients alive.
        if alpha <= 0:
            raise ValueError(f"alpha must be positive; got {alpha}")
        self.alpha = alpha
        self.balance = balance

    def forward(self, u: Tensor, v: Tensor, s: Tensor) -> Tensor:
        """Return mean over pairs of softplus(theta) - s * theta, theta = alpha u v^T."""
        _check_pair(u, v, s)
        s = s.to(u.dtype)
        theta = self.alpha * (u @ v.T)
        # softplus(theta) - s*theta == -log p(s | theta) without overflowing exp(theta).
        nll = F.softplus(theta) - s * theta
        if not self.balance:
            return nll.mean()
        # Each class present contributes equally, so datasets where nearly every pair is
        # similar (MIRFlickr) do not drown the few dissimilar pairs, or vice versa.
        n_pos = s.sum()
        n_neg = s.numel() - n_pos
        pos = (s * nll).sum() / n_pos.clamp(min=1)
        neg = ((1 - s) * nll).sum() / n_neg.clamp(min=1)
        classes_present = (n_pos > 0).to(u.dtype) + (n_neg > 0).to(u.dtype)
        return (pos + neg) / classes_present


class ContrastiveLoss(nn.Module):
    """Pull similar pairs to distance 0, push dissimilar ones beyond ``margin``."""

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        # d is in [0, 1]; 0.5 is the distance of two random (orthogonal) codes.
        self.margin = margin

    def forward(self, u: Tensor, v: Tensor, s: Tensor) -> Tensor:
        """Return mean over pairs of s d^2 + (1 - s) relu(margin - d)^2."""
        _check_pair(u, v, s)
        s = s.to(u.dtype)
        d = code_distance(u, v)
        return (s * d.square() + (1 - s) * F.relu(self.margin - d).square()).mean()


class TripletLoss(nn.Module):
    """Batch-all triplet loss: anchors from u, positives and negatives from v."""

    def __init__(self, margin: float = 0.25) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, u: Tensor, v: Tensor, s: Tensor) -> Tensor:
        """Return the mean of relu(margin + d(i,j) - d(i,k)) over valid (i, j+, k-); 0 if none."""
        _check_pair(u, v, s)
        s = s.to(u.dtype)
        d = code_distance(u, v)
        # Exact, without the (n, m, m) tensor of every triplet (51 GB for a batch of 128
        # against a 10,000-item memory bank): for anchor i and positive j, the hinges over
        # negatives k sum to t * (margin + d_ij) - (sum of the t smallest negative d_ik),
        # t being how many negatives lie below margin + d_ij. Sorting each anchor's
        # negatives and taking prefix sums gives every such sum in O(n m log m).
        # Prefix sums over thousands of distances need float32 at least (bf16 under autocast
        # would round them to tens).
        d = d.to(torch.promote_types(d.dtype, torch.float32))
        threshold = self.margin + d
        # Positives are moved beyond every threshold so that they are never counted.
        beyond = threshold.detach().max() + 1
        negatives, _ = torch.where(s > 0.5, beyond, d).sort(dim=1)
        prefix = F.pad(negatives.cumsum(dim=1), (1, 0))
        below = torch.searchsorted(negatives.detach().contiguous(), threshold.detach().contiguous())
        hinge_sums = below.to(d.dtype) * threshold - prefix.gather(1, below)
        n_valid = (s.sum(dim=1) * (1 - s).sum(dim=1)).sum()
        # Clamp instead of branching: no host sync, and no valid triplet gives 0 with a
        # finite (zero) gradient rather than 0/0.
        return (s * hinge_sums).sum() / n_valid.clamp(min=1)


def structured_margin_loss(
    u: Tensor, v: Tensor, s: Tensor, margin: float, exclude_self: bool = False
) -> Tensor:
    """Max-margin ranking of v for each row of u: a match closer than a non-match by `margin`.

    Similarity is cosine. For anchor i, every match j (s_ij = 1) and non-match k (s_ik = 0)
    give the hinge relu(margin - cos(u_i, v_j) + cos(u_i, v_k)); the loss is their mean over
    all such triplets (0 when there is none). `exclude_self` drops j = i as a match, for u
    and v the same items in the same space (DVSH's joint embedding against itself).
    """
    _check_pair(u, v, s)
    with torch.autocast(u.device.type, enabled=False):
        dtype = torch.promote_types(u.dtype, torch.float32)
        sim = F.normalize(u.to(dtype), dim=1) @ F.normalize(v.to(dtype), dim=1).T
        pos = s.to(dtype)
        if exclude_self:
            pos = pos * (1 - torch.eye(*pos.shape, dtype=dtype, device=pos.device))
        neg = 1 - s.to(dtype)
        # (n, matches, non-matches) hinges, masked to the valid triplets.
        hinge = F.relu(margin - sim.unsqueeze(2) + sim.unsqueeze(1))
        weight = pos.unsqueeze(2) * neg.unsqueeze(1)
        return (hinge * weight).sum() / weight.sum().clamp(min=1)


def tie_aware_average_precision(u: Tensor, v: Tensor, s: Tensor) -> Tensor:
    """Each row of u's average precision ranking v by Hamming distance, ties in random order.

    Short codes put many items at the same distance, and the order within such a tie is
    arbitrary (by database position), so the quantity to raise is the AP expected over
    every order of each tie ("Hashing as Tie-Aware Learning to Rank", He et al., 2018).
    For tanh codes the distance (bits - u.v) / 2 is spread over its two nearest integer
    bins (triangular soft binning), which makes the histogram, and so the AP,
    differentiable; for ±1 codes the bins are exact and so is the AP. Rows with no
    relevant item get 0.

    A tie of c items holding p relevant ones, after N items holding P relevant ones,
    adds sum_k (p/c) (P + 1 + (k-1)(p-1)/(c-1)) / (N + k) over its positions k = 1..c
    (a relevant item at k has on average (k-1)(p-1)/(c-1) relevant items before it in
    the tie); the sum over k is closed-form with the digamma function.
    """
    _check_pair(u, v, s)
    # Histograms of thousands of pairs need float32: autocast's bf16 would round the counts.
    with torch.autocast(u.device.type, enabled=False):
        dtype = torch.promote_types(u.dtype, torch.float32)
        return _tie_aware_ap(u.to(dtype), v.to(dtype), s.to(dtype))


def _tie_aware_ap(u: Tensor, v: Tensor, s: Tensor) -> Tensor:
    bits = u.shape[1]
    d = ((bits - u @ v.T) / 2).clamp(0, bits)
    low = d.detach().floor().clamp(max=bits - 1).long()
    upper = d - low  # share of the pair in bin low + 1; the rest is in bin low
    zeros = d.new_zeros(d.shape[0], bits + 1)
    count = zeros.scatter_add(1, low, 1 - upper).scatter_add(1, low + 1, upper)
    relevant = zeros.scatter_add(1, low, s * (1 - upper)).scatter_add(1, low + 1, s * upper)
    before = count.cumsum(1) - count
    relevant_before = relevant.cumsum(1) - relevant
    eps = 1e-6
    # (p - 1) / (c - 1): exact for whole counts; soft counts below one relevant item add 0.
    slope = F.relu(relevant - 1) / (count - 1).clamp(min=eps)
    harmonic = torch.digamma(before + count + 1) - torch.digamma(before + 1)
    intercept = relevant_before + 1 - slope * (before + 1)
    per_bin = relevant * slope + relevant / count.clamp(min=eps) * intercept * harmonic
    n_relevant = s.sum(1)
    return per_bin.sum(1) / n_relevant.clamp(min=1)


class TieAwareAPLoss(nn.Module):
    """1 - tie-aware average precision (see :func:`tie_aware_average_precision`), listwise.

    Averaged over the rows of u that have at least one relevant item in v.
    """

    def forward(self, u: Tensor, v: Tensor, s: Tensor) -> Tensor:
        """Return the mean of 1 - AP over rows with a relevant item (0 if none has one)."""
        ap = tie_aware_average_precision(u, v, s)
        has_relevant = (s.sum(1) > 0).to(ap.dtype)
        return ((1 - ap) * has_relevant).sum() / has_relevant.sum().clamp(min=1)


SIMILARITY_LOSSES: dict[str, type[nn.Module]] = {
    "pairwise_nll": PairwiseNLLLoss,
    "contrastive": ContrastiveLoss,
    "triplet": TripletLoss,
    "tie_aware_ap": TieAwareAPLoss,
}


def make_similarity_loss(name: str, **params: Any) -> nn.Module:
    """Build the inter-modality similarity loss registered under ``name``."""
    try:
        cls = SIMILARITY_LOSSES[name]
    except KeyError:
        known = ", ".join(sorted(SIMILARITY_LOSSES))
        raise ValueError(f"unknown similarity loss {name!r}; choose one of: {known}") from None
    return cls(**params)


def semantic_label_loss(logits: Tensor, labels: Tensor, multi_label: bool) -> Tensor:
    """Return sigmoid BCE (multi-label) or softmax cross-entropy (single-label) of logits."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if labels.dim() == 1:
        return F.cross_entropy(logits, labels.long())
    # 2-D targets are read as class probabilities; for one-hot rows this is ordinary CE.
    return F.cross_entropy(logits, labels.to(logits.dtype))


def quantization_loss(h: Tensor) -> Tensor:
    """Return mean((h - sign(h))^2), with sign(0) = +1 and the sign detached."""
    # torch.sign(0) is 0, which would leave a zero code unpenalised and unpacked.
    target = torch.where(h >= 0, 1.0, -1.0).to(h.dtype).detach()
    return (h - target).square().mean()


def bit_balance_loss(h: Tensor) -> Tensor:
    """Return the mean over bits of (batch mean of the bit)^2: 0 when bits are balanced."""
    return h.mean(dim=0).square().mean()


def code_fit_loss(h: Tensor, targets: Tensor, kind: str) -> Tensor:
    """Return how far codes h in (-1, 1) are from ±1 targets, averaged over items and bits.

    "logistic": each bit a binary classification, -log p(bit) with p = (1 + h t) / 2 (for
    h = tanh(z), softplus(-2 z t)): a confidently wrong bit keeps its gradient. "squared":
    (h - t)^2.
    """
    if h.shape != targets.shape:
        raise ValueError(f"codes {tuple(h.shape)} and targets {tuple(targets.shape)} differ")
    t = targets.to(h.dtype)
    if kind == "squared":
        return (h - t).square().mean()
    if kind == "logistic":
        # The clamp only bites where tanh has rounded to exactly -t (|z| > ~9).
        return math.log(2) - torch.log((1 + h * t).clamp_min(1e-6)).mean()
    raise ValueError(f"unknown code fit {kind!r}; use logistic or squared")
