"""DSMHN: one stream per modality, trained jointly with DSMHN's four losses.

Inter-modality similarity is computed between a batch of one modality and a memory bank
holding the latest codes of every training item in the other modalities (as DCMH does), so
each step sees batch x N pairs instead of batch x batch: far more supervision per step at
the cost of slightly stale codes on the bank side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from model.hashing import HashHead, LabelHead
from model.losses import (
    TieAwareAPLoss,
    bit_balance_loss,
    label_similarity,
    make_similarity_loss,
    quantization_loss,
    semantic_label_loss,
)
from model.methods.base import Batch, Method, MethodSetup, Stage, TrainingSet, adam_cosine_stage
from model.methods.options import DSMHNConfig


class DSMHN(Method):
    """Streams + label heads + the DSMHN objective; one stage, Adam with a cosine schedule."""

    def __init__(self, streams: Mapping[str, nn.Module], setup: MethodSetup) -> None:
        super().__init__(streams)
        loss: DSMHNConfig = setup.options
        bits, num_labels = setup.bits, setup.num_labels
        self.bits = bits
        self.multi_label = setup.multi_label
        self.cfg = loss
        self.train_config = setup.train
        if loss.shared_label_head:
            # One classifier for every modality pulls same-label codes of all modalities together.
            shared = LabelHead(bits, num_labels)
            self.label_heads = nn.ModuleDict({m: shared for m in streams})
        else:
            self.label_heads = nn.ModuleDict({m: LabelHead(bits, num_labels) for m in streams})
        self.similarity = make_similarity_loss(loss.similarity, **loss.similarity_params)
        # Listwise, beside the pairwise loss: it ranks each item's relevant codes ahead of
        # the rest at Hamming-distance resolution, ties included, which short codes need.
        self.ranking = TieAwareAPLoss()
        self.banks: dict[str, torch.Tensor] = {}

    def stages(self) -> list[Stage]:
        train = self.train_config
        return [adam_cosine_stage("joint", train.epochs, list(self.parameters()), train)]

    def start_epoch(self, stage: str, epoch: int) -> None:
        """Sharpen every hash layer's tanh for this epoch (continuation)."""
        beta = (1.0 + self.cfg.tanh_scale_growth * epoch) ** 0.5
        for module in self.modules():
            if isinstance(module, HashHead):
                module.beta.fill_(beta)

    def start_training(self, data: TrainingSet) -> None:
        """Start every modality's memory bank at random signs."""
        gen = torch.Generator().manual_seed(0)
        for m in self.modalities:
            bank = torch.randint(0, 2, (len(data), self.bits), generator=gen).float() * 2 - 1
            self.banks[m] = bank.to(data.device)

    def training_state(self) -> dict[str, Any]:
        return {"banks": {m: b.cpu() for m, b in self.banks.items()}}

    def load_training_state(self, state: dict[str, Any], device: torch.device) -> None:
        self.banks = {m: b.to(device) for m, b in state["banks"].items()}

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Encode the batch, write its codes into the banks, then the objective's terms."""
        assert batch.labels is not None and batch.train_labels is not None  # needs_labels
        codes = {m: self.encode(m, x) for m, x in batch.inputs.items()}
        for m, h in codes.items():
            # Under mixed precision h is bfloat16; the bank keeps float32.
            self.banks[m][batch.positions] = h.detach().to(self.banks[m].dtype)
        return self.objective(codes, batch.labels, batch.train_labels)

    def objective(
        self, codes: dict[str, torch.Tensor], labels: torch.Tensor, all_labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Named loss terms and their weighted "total" for a batch's codes against the banks.

        Each modality's codes are matched to every other modality's bank (and to its own
        with w_intra), rows of the bank being the training items of `all_labels`.
        """
        cfg = self.cfg
        s_all = label_similarity(labels, all_labels)
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=labels.device)
        for m, h in codes.items():
            for other in self.modalities:
                if other == m and cfg.w_intra == 0:
                    continue
                weight = cfg.w_similarity if other != m else cfg.w_intra
                bank = self.banks[other]
                if cfg.binary_bank:
                    # Asymmetric: continuous codes against the binary codes they are ranked by.
                    bank = torch.where(bank >= 0, 1.0, -1.0)
                term = self.similarity(h, bank, s_all)
                terms[f"sim/{m}-{other}"] = term
                total = total + weight * term
                if cfg.w_ranking and other != m:
                    rank = self.ranking(h, bank, s_all)
                    terms[f"rank/{m}-{other}"] = rank
                    total = total + cfg.w_ranking * rank
            sem = semantic_label_loss(self.label_heads[m](h), labels, self.multi_label)
            quant = quantization_loss(h)
            balance = bit_balance_loss(h)
            terms[f"sem/{m}"], terms[f"quant/{m}"], terms[f"balance/{m}"] = sem, quant, balance
            total = (
                total + cfg.w_semantic * sem + cfg.w_quantization * quant + cfg.w_balance * balance
            )
        terms["total"] = total
        return terms
