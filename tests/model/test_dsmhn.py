"""DSMHN's objective: terms per modality pair against the memory banks, through its contract."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.autograd import gradcheck

from model.config import TrainConfig
from model.losses import (
    ContrastiveLoss,
    PairwiseNLLLoss,
    TieAwareAPLoss,
    TripletLoss,
    bit_balance_loss,
    label_similarity,
    quantization_loss,
    semantic_label_loss,
)
from model.methods.base import Batch, MethodSetup, TrainingSet
from model.methods.dsmhn import DSMHN
from model.methods.options import DSMHNConfig
from model.streams import MLPStream

DIMS = {"image": 6, "text": 5, "video": 7}
N_TRAIN = 10


def _method(
    modalities: tuple[str, ...] = ("image", "text"), multi_label: bool = True, **loss: object
) -> DSMHN:
    torch.manual_seed(0)
    streams = {m: MLPStream(DIMS[m], [8], 16, 0.0) for m in modalities}
    setup = MethodSetup(16, 3, multi_label, DSMHNConfig(**loss), TrainConfig())
    method = DSMHN(streams, setup)
    method.start_training(TrainingSet({}, torch.arange(N_TRAIN), None))
    return method


def _batch(modalities: tuple[str, ...] = ("image", "text"), multi_label: bool = True) -> Batch:
    gen = torch.Generator().manual_seed(1)
    inputs = {m: torch.randn(4, DIMS[m], generator=gen) for m in modalities}
    if multi_label:
        all_labels = (torch.rand(N_TRAIN, 3, generator=gen) > 0.5).float()
        all_labels[:, 0] = 1 - all_labels[:, 1:].max(dim=1).values  # at least one label each
    else:
        all_labels = torch.nn.functional.one_hot(torch.arange(N_TRAIN) % 3, 3).float()
    positions = torch.tensor([0, 3, 5, 7])
    return Batch(inputs, positions, all_labels[positions], all_labels, "joint", 0)


def _labels(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    assert batch.labels is not None and batch.train_labels is not None
    return batch.labels, batch.train_labels


def test_one_stage_of_adam_with_a_cosine_schedule_over_every_parameter() -> None:
    method = _method()
    (stage,) = method.stages()
    assert (stage.name, stage.epochs) == ("joint", TrainConfig().epochs)
    assert stage.parameters == list(method.parameters())
    optimizer = stage.optimizer(stage.parameters)
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == TrainConfig().lr
    assert optimizer.defaults["weight_decay"] == TrainConfig().weight_decay
    assert stage.schedule is not None
    schedule = stage.schedule(optimizer)
    assert isinstance(schedule, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert schedule.T_max == TrainConfig().epochs
    assert DSMHN.needs_labels


@pytest.mark.parametrize("binary_bank", [False, True])
def test_similarity_terms_use_the_other_modality_bank(binary_bank: bool) -> None:
    method = _method(binary_bank=binary_bank)
    batch = _batch()
    labels, all_labels = _labels(batch)
    terms = method.training_step(batch)
    h_image = method.encode("image", batch.inputs["image"])
    bank = method.banks["text"]
    if binary_bank:
        bank = torch.where(bank >= 0, 1.0, -1.0)
        assert set(bank.unique().tolist()) == {-1.0, 1.0}
    expected = PairwiseNLLLoss()(h_image, bank, label_similarity(labels, all_labels))
    assert torch.allclose(terms["sim/image-text"], expected)


def test_banks_take_the_batch_codes_and_total_is_the_weighted_sum() -> None:
    method = _method(w_quantization=0.5, w_balance=0.25)
    batch = _batch()
    labels, _ = _labels(batch)
    terms = method.training_step(batch)
    codes = {m: method.encode(m, x) for m, x in batch.inputs.items()}
    assert torch.equal(method.banks["image"][batch.positions], codes["image"].detach())
    assert set(terms) == {
        "sim/image-text",
        "sim/text-image",
        *(f"{kind}/{m}" for kind in ("sem", "quant", "balance") for m in ("image", "text")),
        "total",
    }
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
    # Each term is the loss function of model.losses on this batch's codes.
    logits = method.label_heads["text"](codes["text"])
    assert torch.allclose(terms["sem/text"], semantic_label_loss(logits, labels, True))
    assert torch.allclose(terms["quant/image"], quantization_loss(codes["image"]))
    assert torch.allclose(terms["balance/text"], bit_balance_loss(codes["text"]))


def test_every_stream_and_label_head_gets_a_gradient() -> None:
    method = _method(modalities=("image", "text", "video"), shared_label_head=False)
    method.training_step(_batch(("image", "text", "video")))["total"].backward()
    for name, weight in method.named_parameters():
        assert weight.grad is not None and torch.count_nonzero(weight.grad) > 0, name


def test_three_modalities_with_intra_and_triplet_terms() -> None:
    modalities = ("image", "text", "video")
    method = _method(modalities, w_intra=0.2, similarity="triplet")
    batch = _batch(modalities)
    labels, all_labels = _labels(batch)
    terms = method.training_step(batch)
    # Every ordered pair, a modality with itself included: each is a batch against a bank.
    assert {k for k in terms if k.startswith("sim/")} == {
        f"sim/{a}-{b}" for a in modalities for b in modalities
    }
    assert len([k for k in terms if k.startswith(("sem/", "quant/", "balance/"))]) == 9
    s = label_similarity(labels, all_labels)
    h_text = method.encode("text", batch.inputs["text"])
    assert torch.allclose(terms["sim/text-video"], TripletLoss()(h_text, method.banks["video"], s))
    assert torch.allclose(terms["sim/text-text"], TripletLoss()(h_text, method.banks["text"], s))
    intra = sum(terms[f"sim/{m}-{m}"] for m in modalities)
    no_intra = _method(modalities, similarity="triplet").training_step(batch)
    assert torch.allclose(terms["total"], no_intra["total"] + 0.2 * intra)


def test_reordering_the_modalities_renames_terms_but_keeps_their_values() -> None:
    batch = _batch()
    terms = _method().training_step(batch)
    swapped = dataclasses.replace(batch, inputs={m: batch.inputs[m] for m in ("text", "image")})
    again = _method().training_step(swapped)
    assert set(again) == set(terms)
    for key, value in terms.items():
        assert torch.allclose(again[key], value), key


def test_single_label_data_and_similarity_parameters() -> None:
    method = _method(multi_label=False, similarity="contrastive", similarity_params={"margin": 0.4})
    batch = _batch(multi_label=False)
    labels, all_labels = _labels(batch)
    terms = method.training_step(batch)
    h_image = method.encode("image", batch.inputs["image"])
    s = label_similarity(labels, all_labels)
    expected = ContrastiveLoss(margin=0.4)(h_image, method.banks["text"], s)
    assert torch.allclose(terms["sim/image-text"], expected)
    # Single-label: softmax cross-entropy, not the sigmoid one of multi-label data.
    logits = method.label_heads["image"](h_image)
    assert torch.allclose(terms["sem/image"], semantic_label_loss(logits, labels, False))
    assert not torch.allclose(terms["sem/image"], semantic_label_loss(logits, labels, True))


def test_objective_gradcheck() -> None:
    method = _method(w_intra=0.2).double()
    method.banks = {m: b.double() for m, b in method.banks.items()}
    batch = _batch()
    labels, all_labels = _labels(batch)
    gen = torch.Generator().manual_seed(2)
    codes = [torch.tanh(torch.randn(4, 16, generator=gen, dtype=torch.float64)) for _ in range(2)]

    def total(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        terms = method.objective({"image": image, "text": text}, labels.double(), all_labels)
        return terms["total"]

    assert gradcheck(total, tuple(c.requires_grad_() for c in codes))


def test_labels_that_do_not_match_the_batch_are_refused() -> None:
    method = _method()
    batch = _batch()
    _, all_labels = _labels(batch)
    short = Batch(batch.inputs, batch.positions, all_labels[:3], all_labels, "joint", 0)
    with pytest.raises(ValueError, match=r"similarity must be \(4, 10\); got \(3, 10\)"):
        method.training_step(short)


def test_continuation_sharpens_every_hash_layer() -> None:
    method = _method(tanh_scale_growth=3.0)
    method.start_epoch("joint", 5)
    betas = [s.hash.beta.item() for s in method.streams.values()]
    assert betas == pytest.approx([4.0, 4.0])  # sqrt(1 + 3 * 5)


def test_the_banks_are_its_training_state() -> None:
    method = _method()
    method.training_step(_batch())
    saved = method.training_state()
    fresh = _method()
    assert not torch.equal(fresh.banks["image"], saved["banks"]["image"])
    fresh.load_training_state(saved, torch.device("cpu"))
    for m in ("image", "text"):
        assert torch.equal(fresh.banks[m], method.banks[m])


@pytest.mark.parametrize("similarity", ["pairwise_nll", "contrastive", "triplet", "tie_aware_ap"])
def test_a_mixed_precision_step_keeps_float32_banks(similarity: str) -> None:
    # --device cuda trains under bfloat16 autocast; CPU autocast takes the same code paths.
    method = _method(similarity=similarity, similarity_params={})
    batch = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = method.training_step(batch)
    terms["total"].backward()
    assert torch.isfinite(terms["total"])
    for m in ("image", "text"):
        assert method.banks[m].dtype == torch.float32
        codes = method.encode(m, batch.inputs[m])
        assert torch.equal(method.banks[m][batch.positions].sign(), codes.sign())


def test_the_ranking_term_is_the_tie_aware_ap_loss_between_modalities() -> None:
    method = _method(w_ranking=2.0, w_intra=0.5)
    batch = _batch()
    labels, all_labels = _labels(batch)
    terms = method.training_step(batch)
    s = label_similarity(labels, all_labels)
    h_text = method.encode("text", batch.inputs["text"])
    expected = TieAwareAPLoss()(h_text, method.banks["image"], s)
    assert torch.allclose(terms["rank/text-image"], expected)
    # Cross-modal only: the intra-modal pairs keep just their similarity term.
    assert {k for k in terms if k.startswith("rank/")} == {"rank/image-text", "rank/text-image"}
    plain = _method(w_intra=0.5).training_step(batch)
    ranked = 2.0 * (terms["rank/image-text"] + terms["rank/text-image"])
    assert torch.allclose(terms["total"], plain["total"] + ranked)
