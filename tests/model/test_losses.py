"""Losses checked against hand-computed values, hand-derived gradients and gradcheck."""

import itertools
import math

import pytest
import torch
from torch.autograd import gradcheck

from model.losses import (
    SIMILARITY_LOSSES,
    ContrastiveLoss,
    PairwiseNLLLoss,
    TieAwareAPLoss,
    TripletLoss,
    bit_balance_loss,
    code_distance,
    label_similarity,
    make_similarity_loss,
    quantization_loss,
    semantic_label_loss,
    tie_aware_average_precision,
)


def _codes(n: int, bits: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(torch.randn(n, bits, generator=g, dtype=dtype)).requires_grad_()


def _multi_hot(n: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, generator=g) < 0.3).float()


# --- label_similarity ------------------------------------------------------------------


def test_label_similarity_multi_label():
    a = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    b = torch.tensor([[0, 0, 1], [1, 1, 0]])
    # a0 shares label 2 with b0 and label 0 with b1; a1 shares label 1 with b1 only;
    # a2 has no labels, so it is similar to nothing.
    expected = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    s = label_similarity(a, b)
    assert s.dtype == torch.float32
    assert torch.equal(s, expected)
    assert torch.equal(label_similarity(a.bool(), b.bool()), expected)
    # Counts of shared labels above 1 still map to 1.
    assert torch.equal(label_similarity(torch.ones(1, 3), torch.ones(1, 3)), torch.ones(1, 1))


def test_label_similarity_keeps_float_dtype():
    a = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    assert label_similarity(a, a).dtype == torch.float64


def test_code_distance_is_normalised_hamming_for_binary_codes():
    u = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    v = torch.tensor([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0], [-1.0, -1.0, 1.0, 1.0]])
    # Hamming distances 0, 2, 4 over 4 bits.
    assert torch.allclose(code_distance(u, v), torch.tensor([[0.0, 0.5, 1.0]]))


# --- pairwise_nll ----------------------------------------------------------------------


def test_pairwise_nll_value():
    u = torch.tensor([[0.5, 0.5]])
    v = torch.tensor([[0.5, 0.5], [0.5, -0.5]])
    s = torch.tensor([[1.0, 0.0]])
    # u.v = [0.5, 0]; theta = 0.5 * u.v = [0.25, 0].
    # pair 0 (s=1): softplus(0.25) - 0.25 = log(1 + e^-0.25); pair 1 (s=0): softplus(0) = log 2.
    expected = (math.log1p(math.exp(-0.25)) + math.log(2)) / 2
    assert PairwiseNLLLoss()(u, v, s).item() == pytest.approx(expected, rel=1e-6)
    # alpha = 2: theta = [1, 0]; pair 0 gives log(1 + e^-1).
    expected2 = (math.log1p(math.exp(-1.0)) + math.log(2)) / 2
    assert PairwiseNLLLoss(alpha=2.0)(u, v, s).item() == pytest.approx(expected2, rel=1e-6)


def test_pairwise_nll_balance_value():
    u = torch.tensor([[0.5, 0.5]])
    v = torch.tensor([[0.5, 0.5], [0.5, -0.5], [-0.5, -0.5]])
    s = torch.tensor([[1.0, 0.0, 0.0]])
    # theta = [0.25, 0, -0.25].
    pos = math.log1p(math.exp(-0.25))  # s=1, theta=0.25
    neg = (math.log(2) + math.log1p(math.exp(-0.25))) / 2  # s=0: softplus(0), softplus(-0.25)
    # Balanced: each class weighs 1/2, whatever its count.
    balanced = PairwiseNLLLoss(balance=True)(u, v, s).item()
    assert balanced == pytest.approx((pos + neg) / 2, rel=1e-6)
    # Unbalanced is the plain mean over the 3 pairs: (pos + 2 neg) / 3.
    plain = PairwiseNLLLoss()(u, v, s).item()
    assert plain == pytest.approx((pos + 2 * neg) / 3, rel=1e-6)
    assert balanced != pytest.approx(plain)


def test_pairwise_nll_balance_with_one_class_is_the_plain_mean():
    u, v = _codes(3, 8, 0), _codes(4, 8, 1)
    for s in (torch.ones(3, 4), torch.zeros(3, 4)):
        s = s.double()
        balanced = PairwiseNLLLoss(balance=True)(u, v, s)
        assert torch.allclose(balanced, PairwiseNLLLoss()(u, v, s))


def test_pairwise_nll_gradient_matches_formula():
    u, v = _codes(5, 16, 2), _codes(7, 16, 3)
    s = label_similarity(_multi_hot(5, 4, 4), _multi_hot(7, 4, 5)).double()
    alpha = 0.3
    PairwiseNLLLoss(alpha=alpha)(u, v, s).backward()
    # d/dtheta [softplus(theta) - s theta] = sigmoid(theta) - s; theta = alpha u v^T; mean
    # over n*m pairs. So dL/du = alpha/(nm) (sigmoid(theta) - s) v, dL/dv = alpha/(nm) (.)^T u.
    with torch.no_grad():
        r = torch.sigmoid(alpha * u @ v.T) - s
        grad_u = alpha / (5 * 7) * r @ v
        grad_v = alpha / (5 * 7) * r.T @ u
    assert torch.allclose(u.grad, grad_u)
    assert torch.allclose(v.grad, grad_v)


def test_pairwise_nll_stable_for_large_logits():
    # 256 saturated bits at alpha 0.5 give theta ~ 127: exp(theta) overflows float32 beyond 88.
    u = torch.full((1, 256), 0.999, requires_grad=True)
    theta = 0.5 * 256 * 0.999**2
    loss_neg = PairwiseNLLLoss()(u, u, torch.zeros(1, 1))
    loss_pos = PairwiseNLLLoss()(u, u, torch.ones(1, 1))
    assert loss_neg.item() == pytest.approx(theta, rel=1e-5)
    assert loss_pos.item() == pytest.approx(0.0, abs=1e-6)
    (loss_neg + loss_pos).backward()
    assert torch.isfinite(u.grad).all()


@pytest.mark.parametrize("balance", [False, True])
def test_pairwise_nll_gradcheck(balance):
    u, v = _codes(4, 6, 6), _codes(3, 6, 7)
    s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    loss = PairwiseNLLLoss(alpha=0.7, balance=balance)
    assert gradcheck(lambda a, b: loss(a, b, s.double()), (u, v))


# --- contrastive -----------------------------------------------------------------------


def test_contrastive_value():
    u = torch.tensor([[0.5, 0.5]])
    v = torch.tensor([[1.0, 1.0], [0.0, 0.0], [-1.0, -1.0]])
    s = torch.tensor([[0.0, 1.0, 0.0]])
    # u.v = [1, 0, -1]; bits = 2; d = (2 - u.v) / 4 = [0.25, 0.5, 0.75].
    # margin 0.6: pair 0 (s=0) (0.6 - 0.25)^2 = 0.1225; pair 1 (s=1) 0.5^2 = 0.25;
    # pair 2 (s=0) relu(0.6 - 0.75)^2 = 0.  Mean = 0.3725 / 3.
    loss = ContrastiveLoss(margin=0.6)(u, v, s)
    assert loss.item() == pytest.approx(0.3725 / 3, rel=1e-6)
    # Default margin 0.5: pair 0 gives 0.25^2 = 0.0625; pair 2 still 0.  (0.0625 + 0.25) / 3.
    assert ContrastiveLoss()(u, v, s).item() == pytest.approx(0.3125 / 3, rel=1e-6)


def test_contrastive_gradcheck():
    u, v = _codes(4, 5, 8), _codes(3, 5, 9)
    s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss = ContrastiveLoss(margin=0.6)
    assert gradcheck(lambda a, b: loss(a, b, s.double()), (u, v))


# --- triplet ---------------------------------------------------------------------------


def test_triplet_value():
    u = torch.tensor([[0.5, 0.5], [0.3, -0.2]])
    v = torch.tensor([[1.0, 1.0], [0.0, 0.0], [-1.0, -1.0]])
    s = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # Anchor 0: d = [0.25, 0.5, 0.75]; positives {0, 2}, negative {1}.
    #   (j=0, k=1): relu(0.25 + 0.25 - 0.5) = 0   (valid, counts in the mean)
    #   (j=2, k=1): relu(0.25 + 0.75 - 0.5) = 0.5
    # Anchor 1 has no positive, so no triplets.  Mean over 2 valid triplets = 0.25.
    assert TripletLoss()(u, v, s).item() == pytest.approx(0.25, rel=1e-6)
    # margin 0.1: (j=0) relu(-0.15) = 0, (j=2) relu(0.35) = 0.35 -> 0.175.
    assert TripletLoss(margin=0.1)(u, v, s).item() == pytest.approx(0.175, rel=1e-6)


def test_triplet_matches_brute_force():
    u, v = _codes(5, 8, 10), _codes(6, 8, 11)
    s = label_similarity(_multi_hot(5, 3, 12), _multi_hot(6, 3, 13)).double()
    d = code_distance(u, v)
    hinges = [
        torch.relu(0.25 + d[i, j] - d[i, k])
        for i in range(5)
        for j in range(6)
        for k in range(6)
        if s[i, j] == 1 and s[i, k] == 0
    ]
    assert hinges, "fixture should contain triplets"
    expected = torch.stack(hinges).mean()
    assert torch.allclose(TripletLoss()(u, v, s), expected)


def test_triplet_matches_brute_force_on_binary_codes_with_ties():
    # Sign codes put many distances exactly on a hinge's kink; values and gradients must
    # still equal the (n, m, m) formulation's (relu'(0) = 0 in both).
    gen = torch.Generator().manual_seed(21)
    u = (torch.randint(0, 2, (7, 6), generator=gen) * 2 - 1).double().requires_grad_()
    v = (torch.randint(0, 2, (40, 6), generator=gen) * 2 - 1).double().requires_grad_()
    s = label_similarity(_multi_hot(7, 4, 22), _multi_hot(40, 4, 23)).double()
    d = code_distance(u, v)
    valid = s.unsqueeze(2) * (1 - s).unsqueeze(1)
    expected = (valid * torch.relu(0.25 + d.unsqueeze(2) - d.unsqueeze(1))).sum() / valid.sum()
    expected_grads = torch.autograd.grad(expected, (u, v))
    loss = TripletLoss()(u, v, s)
    assert torch.allclose(loss, expected)
    for got, want in zip(torch.autograd.grad(loss, (u, v)), expected_grads, strict=True):
        assert torch.allclose(got, want)


def test_triplet_against_a_memory_bank_fits_in_memory():
    # A batch of 128 against 20,000 bank codes: all triplets at once would be 205 GB.
    u, v = _codes(128, 16, 24, torch.float32), _codes(20_000, 16, 25, torch.float32)
    s = label_similarity(_multi_hot(128, 24, 26), _multi_hot(20_000, 24, 27))
    loss = TripletLoss()(u, v, s)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and torch.isfinite(u.grad).all()


def test_triplet_sums_half_precision_codes_in_float32():
    u, v = _codes(16, 16, 28, torch.float32), _codes(3000, 16, 29, torch.float32)
    s = label_similarity(_multi_hot(16, 6, 30), _multi_hot(3000, 6, 31))
    reference = TripletLoss()(u, v, s)
    half = TripletLoss()(u.bfloat16(), v.bfloat16(), s)
    assert half.dtype == torch.float32
    # Only the codes' own rounding remains (bf16 prefix sums would be off by whole units).
    assert half.item() == pytest.approx(reference.item(), rel=0.02)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_triplet_without_valid_triplets_is_zero_with_finite_gradient(fill):
    u, v = _codes(3, 4, 14), _codes(4, 4, 15)
    loss = TripletLoss()(u, v, torch.full((3, 4), fill, dtype=torch.float64))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(v.grad).all()
    assert torch.count_nonzero(u.grad) == 0


def test_triplet_gradcheck():
    u, v = _codes(3, 5, 16), _codes(4, 5, 17)
    s = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    loss = TripletLoss(margin=0.3)
    assert gradcheck(lambda a, b: loss(a, b, s.double()), (u, v))


# --- tie-aware average precision -------------------------------------------------------


def _average_precision(relevant: list[int]) -> float:
    hits, total = 0, 0.0
    for rank, r in enumerate(relevant, start=1):
        if r:
            hits += 1
            total += hits / rank
    return total / max(1, sum(relevant))


def _expected_ap_over_tie_orders(u: torch.Tensor, v: torch.Tensor, s: torch.Tensor) -> list[float]:
    """Mean AP over every order of the items within each Hamming distance (brute force)."""
    d = (u.shape[1] - u @ v.T) / 2
    out = []
    for i in range(u.shape[0]):
        ties: dict[int, list[int]] = {}
        for j in range(v.shape[0]):
            ties.setdefault(int(d[i, j]), []).append(int(s[i, j]))
        orders = itertools.product(*(itertools.permutations(ties[k]) for k in sorted(ties)))
        aps = [_average_precision([r for tie in order for r in tie]) for order in orders]
        out.append(sum(aps) / len(aps))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_tie_aware_ap_is_the_ap_expected_over_every_order_of_ties(seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 2, (3, 4), generator=g).double() * 2 - 1
    v = torch.randint(0, 2, (7, 4), generator=g).double() * 2 - 1
    s = torch.randint(0, 2, (3, 7), generator=g).double()
    s[0, :] = 0  # a row without relevant items gets 0
    got = tie_aware_average_precision(u, v, s)
    assert got.tolist() == pytest.approx(_expected_ap_over_tie_orders(u, v, s), abs=1e-9)
    assert got[0] == 0


def test_tie_aware_ap_without_ties_is_the_plain_ap():
    # Distances 0, 1, 2, 3 from the query: the ranking is v's order, no ties.
    u = torch.tensor([[1.0, 1.0, 1.0]])
    v = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, 1.0], [-1.0, -1.0, 1.0], [-1.0, -1.0, -1.0]])
    s = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert float(tie_aware_average_precision(u, v, s)[0]) == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_tie_aware_ap_loss_averages_rows_with_relevant_items():
    u = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    v = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    s = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # row 0: its one relevant item is ranked 2nd
    assert float(TieAwareAPLoss()(u, v, s)) == pytest.approx(1 - 1 / 2)
    assert float(TieAwareAPLoss()(u, v, torch.zeros(2, 2))) == 0


def test_tie_aware_ap_gradcheck():
    u, v = _codes(3, 6, 18), _codes(5, 6, 19)
    s = torch.tensor(
        [[1.0, 0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0, 0.0]]
    )
    assert gradcheck(lambda a, b: TieAwareAPLoss()(a, b, s.double()), (u, v))


# --- registry --------------------------------------------------------------------------


def test_make_similarity_loss():
    assert set(SIMILARITY_LOSSES) == {"pairwise_nll", "contrastive", "triplet", "tie_aware_ap"}
    loss = make_similarity_loss("contrastive", margin=0.3)
    assert isinstance(loss, ContrastiveLoss) and loss.margin == 0.3
    assert make_similarity_loss("pairwise_nll", balance=True).balance is True
    with pytest.raises(ValueError, match="unknown similarity loss 'hinge'"):
        make_similarity_loss("hinge")


def test_similarity_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="similarity must be"):
        PairwiseNLLLoss()(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="codes must be"):
        ContrastiveLoss()(torch.zeros(2, 4), torch.zeros(3, 8), torch.zeros(2, 3))


# --- semantic --------------------------------------------------------------------------


def test_semantic_label_loss_single_label():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    # softmax([0, ln 3]) = [1/4, 3/4].  Row 0 class 1: -ln(3/4); row 1 class 0: -ln(1/4).
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    idx = torch.tensor([1, 0])
    one_hot = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert semantic_label_loss(logits, idx, multi_label=False).item() == pytest.approx(expected)
    assert semantic_label_loss(logits, one_hot, multi_label=False).item() == pytest.approx(expected)


def test_semantic_label_loss_multi_label():
    logits = torch.tensor([[0.0, math.log(3.0), -math.log(3.0)]])
    labels = torch.tensor([[1, 1, 1]])
    # sigmoid = [1/2, 3/4, 1/4]; BCE = -ln of each, mean over 3 entries.
    expected = -(math.log(0.5) + math.log(0.75) + math.log(0.25)) / 3
    assert semantic_label_loss(logits, labels, multi_label=True).item() == pytest.approx(expected)
    # Same labels read as single-label would be a different (soft-target) loss.
    single = semantic_label_loss(logits, labels, multi_label=False).item()
    assert single != pytest.approx(expected)


@pytest.mark.parametrize("multi_label", [False, True])
def test_semantic_label_loss_gradcheck(multi_label):
    logits = _codes(4, 3, 18)
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.float64)
    if multi_label:
        labels[0, 2] = 1.0
    assert gradcheck(lambda z: semantic_label_loss(z, labels, multi_label), (logits,))


# --- quantization and balance ----------------------------------------------------------


def test_quantization_value_and_gradient():
    h = torch.tensor([[0.5, -0.25], [0.0, 1.0]], requires_grad=True)
    # sign(h) with sign(0) = +1 is [[1, -1], [1, 1]].
    # (0.5-1)^2 + (-0.25+1)^2 + (0-1)^2 + 0 = 0.25 + 0.5625 + 1 = 1.8125, over 4 entries.
    loss = quantization_loss(h)
    assert loss.item() == pytest.approx(1.8125 / 4)
    loss.backward()
    # dL/dh = 2 (h - b) / 4 with b constant: [[-0.25, 0.375], [-0.5, 0]].
    assert torch.allclose(h.grad, torch.tensor([[-0.25, 0.375], [-0.5, 0.0]]))


def test_quantization_gradcheck():
    # Away from 0, where the detached sign is locally constant.
    assert gradcheck(quantization_loss, (_codes(4, 6, 19),))


def test_bit_balance_value_and_gradient():
    h = torch.tensor([[1.0, 0.5], [0.5, -0.5]], requires_grad=True)
    # Column means [0.75, 0]; mean of squares (0.5625 + 0) / 2 = 0.28125.
    loss = bit_balance_loss(h)
    assert loss.item() == pytest.approx(0.28125)
    loss.backward()
    # dL/dh[i, k] = 2 mean_k / (n * bits) = 2 * [0.75, 0] / 4 = [0.375, 0] for every row.
    assert torch.allclose(h.grad, torch.tensor([[0.375, 0.0], [0.375, 0.0]]))
    # Perfectly balanced bits cost nothing.
    assert bit_balance_loss(torch.tensor([[1.0, -1.0], [-1.0, 1.0]])).item() == 0.0


def test_bit_balance_gradcheck():
    assert gradcheck(bit_balance_loss, (_codes(5, 4, 20),))
