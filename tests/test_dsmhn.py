"""DSMHN's objective: terms per modality pair against the memory banks."""

from __future__ import annotations

import pytest
import torch

from model.config import LossConfig
from model.losses import PairwiseNLLLoss, TieAwareAPLoss, label_similarity
from model.methods.dsmhn import DSMHN
from model.streams import MLPStream


def _method(**loss: object) -> DSMHN:
    torch.manual_seed(0)
    streams = {"image": MLPStream(6, [8], 16, 0.0), "text": MLPStream(5, [8], 16, 0.0)}
    method = DSMHN(streams, bits=16, num_labels=3, multi_label=True, loss=LossConfig(**loss))
    method.init_banks(10, torch.device("cpu"))
    return method


def _batch() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(4, 6, generator=gen), "text": torch.randn(4, 5, generator=gen)}
    all_labels = (torch.rand(10, 3, generator=gen) > 0.5).float()
    all_labels[:, 0] = 1 - all_labels[:, 1:].max(dim=1).values  # at least one label each
    index = torch.tensor([0, 3, 5, 7])
    return batch, index, all_labels[index], all_labels


@pytest.mark.parametrize("binary_bank", [False, True])
def test_similarity_terms_use_the_other_modality_bank(binary_bank: bool) -> None:
    method = _method(binary_bank=binary_bank)
    batch, index, labels, all_labels = _batch()
    terms = method.training_loss(batch, index, labels, all_labels)
    h_image = method.encode("image", batch["image"])
    bank = method.banks["text"]
    if binary_bank:
        bank = torch.where(bank >= 0, 1.0, -1.0)
        assert set(bank.unique().tolist()) == {-1.0, 1.0}
    expected = PairwiseNLLLoss()(h_image, bank, label_similarity(labels, all_labels))
    assert torch.allclose(terms["sim/image-text"], expected)


def test_banks_take_the_batch_codes_and_total_is_the_weighted_sum() -> None:
    method = _method(w_quantization=0.5, w_balance=0.25)
    batch, index, labels, all_labels = _batch()
    terms = method.training_loss(batch, index, labels, all_labels)
    assert torch.equal(
        method.banks["image"][index], method.encode("image", batch["image"]).detach()
    )
    cfg = method.cfg
    total = sum(
        terms[f"sim/{a}-{b}"] * cfg.w_similarity for a, b in (("image", "text"), ("text", "image"))
    )
    for m in ("image", "text"):
        total = total + cfg.w_semantic * terms[f"sem/{m}"]
        total = (
            total + cfg.w_quantization * terms[f"quant/{m}"] + cfg.w_balance * terms[f"balance/{m}"]
        )
    assert torch.allclose(terms["total"], total)


def test_continuation_sharpens_every_hash_layer() -> None:
    method = _method(tanh_scale_growth=3.0)
    method.set_epoch(5)
    betas = [s.hash.beta.item() for s in method.streams.values()]
    assert betas == pytest.approx([4.0, 4.0])  # sqrt(1 + 3 * 5)


@pytest.mark.parametrize("similarity", ["pairwise_nll", "contrastive", "triplet", "tie_aware_ap"])
def test_a_mixed_precision_step_keeps_float32_banks(similarity: str) -> None:
    # --device cuda trains under bfloat16 autocast; CPU autocast takes the same code paths.
    method = _method(similarity=similarity, similarity_params={})
    batch, index, labels, all_labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = method.training_loss(batch, index, labels, all_labels)
    terms["total"].backward()
    assert torch.isfinite(terms["total"])
    for m in ("image", "text"):
        assert method.banks[m].dtype == torch.float32
        assert torch.equal(method.banks[m][index].sign(), method.encode(m, batch[m]).sign())


def test_the_ranking_term_is_the_tie_aware_ap_loss_between_modalities() -> None:
    method = _method(w_ranking=2.0, w_intra=0.5)
    batch, index, labels, all_labels = _batch()
    terms = method.training_loss(batch, index, labels, all_labels)
    s = label_similarity(labels, all_labels)
    h_text = method.encode("text", batch["text"])
    expected = TieAwareAPLoss()(h_text, method.banks["image"], s)
    assert torch.allclose(terms["rank/text-image"], expected)
    # Cross-modal only: the intra-modal pairs keep just their similarity term.
    assert {k for k in terms if k.startswith("rank/")} == {"rank/image-text", "rank/text-image"}
    plain = _method(w_intra=0.5).training_loss(batch, index, labels, all_labels)
    ranked = 2.0 * (terms["rank/image-text"] + terms["rank/text-image"])
    assert torch.allclose(terms["total"], plain["total"] + ranked)
