"""DJSRH's joint-semantics matrix and reconstruction loss against hand computation and autograd."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from model.joint_semantics import (
    alpha_for_epoch,
    feature_similarity,
    fused_similarity,
    joint_semantics,
    normalized_codes,
    reconstruction_terms,
)

# Image features at 90 and 60 degrees: cosines 0 and 0.5, so 2 cos - 1 is -1 and 0.
IMAGE = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, math.sqrt(2) / 2]])
# Texts 1 and 2 alike, text 3 orthogonal to both (the scale of a row does not matter).
TEXT = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])


def test_feature_similarity_is_twice_the_cosine_minus_one() -> None:
    expected_image = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    expected_text = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    torch.testing.assert_close(feature_similarity(IMAGE), expected_image, atol=1e-6, rtol=0)
    torch.testing.assert_close(feature_similarity(TEXT), expected_text, atol=1e-6, rtol=0)


def test_joint_semantics_matches_a_hand_computed_3x3_case() -> None:
    sims = {"image": feature_similarity(IMAGE), "text": feature_similarity(TEXT)}
    fused = fused_similarity(sims, beta=0.5)
    torch.testing.assert_close(
        fused,
        torch.tensor([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [-0.5, -0.5, 1.0]]),
        atol=1e-6,
        rtol=0,
    )
    # S~ S~^T = [[5/4, 1/4, -1], [1/4, 5/4, -1], [-1, -1, 3/2]]; with mu 2 and eta 1/2,
    # S = S~ + S~ S~^T / 3.
    expected = torch.tensor(
        [
            [17 / 12, 1 / 12, -5 / 6],
            [1 / 12, 17 / 12, -5 / 6],
            [-5 / 6, -5 / 6, 3 / 2],
        ]
    )
    torch.testing.assert_close(joint_semantics(fused, mu=2.0, eta=0.5), expected, atol=1e-6, rtol=0)


def test_fusion_weights_media_by_beta_and_splits_it_between_image_and_video() -> None:
    a, b, t = torch.full((2, 2), 1.0), torch.full((2, 2), 3.0), torch.full((2, 2), 10.0)
    torch.testing.assert_close(fused_similarity({"image": a, "text": t}, 0.9), a * 0.9 + t * 0.1)
    torch.testing.assert_close(
        fused_similarity({"image": a, "video": b, "text": t}, 0.5), (a + b) / 4 + t / 2
    )
    # No text: nothing to weigh against, the media matrices' mean.
    torch.testing.assert_close(fused_similarity({"image": a, "video": b}, 0.9), (a + b) / 2)


def test_codes_are_unit_rows_and_alpha_grows_as_the_square_root_of_the_epoch() -> None:
    h = torch.tensor([[0.5, -2.0, 1.0], [0.0, 0.0, 3.0]])
    b = normalized_codes(h, 2.0)
    torch.testing.assert_close(b.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(b[0] * torch.tanh(2 * h[0]).norm(), torch.tanh(2 * h[0]))
    assert [alpha_for_epoch(e) for e in (0, 3, 8)] == [1.0, 2.0, 3.0]


def _codes(n: int, bits: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, bits, generator=g, dtype=torch.float64)


def test_loss_terms_match_their_definition_entry_by_entry() -> None:
    bi = normalized_codes(_codes(4, 8, 0), 1.0)
    bt = normalized_codes(_codes(4, 8, 1), 1.0)
    s = joint_semantics(feature_similarity(_codes(4, 5, 2)), mu=1.5, eta=0.4)
    terms = reconstruction_terms({"image": bi, "text": bt}, s, {"image": 0.3, "text": 0.2})

    def mse(x: torch.Tensor, y: torch.Tensor) -> float:
        return (
            sum((float(x[i] @ y[j]) - float(s[i, j])) ** 2 for i in range(4) for j in range(4)) / 16
        )

    assert float(terms["cross/image-text"]) == pytest.approx(mse(bi, bt), rel=1e-12)
    assert float(terms["intra/image"]) == pytest.approx(mse(bi, bi), rel=1e-12)
    assert float(terms["intra/text"]) == pytest.approx(mse(bt, bt), rel=1e-12)
    expected_total = mse(bi, bt) + 0.3 * mse(bi, bi) + 0.2 * mse(bt, bt)
    assert float(terms["total"]) == pytest.approx(expected_total, rel=1e-12)
    # A weight of 0 leaves the intra-modal term out.
    assert "intra/text" not in reconstruction_terms({"image": bi, "text": bt}, s, {"image": 1.0})


def test_three_modalities_have_a_cross_term_per_pair() -> None:
    codes = {
        m: normalized_codes(_codes(3, 8, i), 1.0) for i, m in enumerate(("image", "video", "text"))
    }
    s = torch.eye(3, dtype=torch.float64)
    terms = reconstruction_terms(codes, s, {})
    assert sorted(terms) == ["cross/image-text", "cross/image-video", "cross/video-text", "total"]


def test_gradient_with_respect_to_the_codes_is_the_hand_derived_one() -> None:
    n = 5
    bi = normalized_codes(_codes(n, 8, 3), 1.0).requires_grad_()
    bt = normalized_codes(_codes(n, 8, 4), 1.0).requires_grad_()
    s = joint_semantics(feature_similarity(_codes(n, 6, 5)), mu=1.5, eta=0.4)
    lam = 0.1
    reconstruction_terms({"image": bi, "text": bt}, s, {"image": lam, "text": lam})[
        "total"
    ].backward()
    # d/dB_I of mean((B_I B_T^T - S)^2) is 2 (B_I B_T^T - S) B_T / n^2; the intra-modal term,
    # S symmetric, gives 4 (B_I B_I^T - S) B_I / n^2.
    with torch.no_grad():
        cross = bi @ bt.T - s
        grad_i = 2 * cross @ bt / n**2 + lam * 4 * (bi @ bi.T - s) @ bi / n**2
        grad_t = 2 * cross.T @ bi / n**2 + lam * 4 * (bt @ bt.T - s) @ bt / n**2
    torch.testing.assert_close(bi.grad, grad_i)
    torch.testing.assert_close(bt.grad, grad_t)


def test_gradient_through_tanh_and_normalisation_matches_finite_differences() -> None:
    s = joint_semantics(feature_similarity(_codes(4, 6, 6)), mu=1.5, eta=0.4)

    def loss(hi: torch.Tensor, ht: torch.Tensor) -> torch.Tensor:
        codes = {"image": normalized_codes(hi, 1.7), "text": normalized_codes(ht, 1.7)}
        return reconstruction_terms(codes, s, {"image": 0.1, "text": 0.1})["total"]

    hi = _codes(4, 8, 7).requires_grad_()
    ht = _codes(4, 8, 8).requires_grad_()
    assert gradcheck(loss, (hi, ht), eps=1e-6, atol=1e-7)
