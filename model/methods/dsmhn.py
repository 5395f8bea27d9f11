"""DSMHN: one stream per modality, trained jointly with DSMHN's four losses.

Inter-modality similarity is computed between a batch of one modality and a memory bank
holding the latest codes of every training item in the other modalities (as DCMH does), so
each step sees batch x N pairs instead of batch x batch: far more supervision per step at
the cost of slightly stale codes on the bank side.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import LossConfig
from model.hashing import HashHead, LabelHead
from model.losses import (
    TieAwareAPLoss,
    bit_balance_loss,
    label_similarity,
    make_similarity_loss,
    quantization_loss,
    semantic_label_loss,
)


class DSMHN(nn.Module):
    """Streams + label heads + the DSMHN objective."""

    def __init__(
        self,
        streams: dict[str, nn.Module],
        bits: int,
        num_labels: int,
        multi_label: bool,
        loss: LossConfig,
    ) -> None:
        super().__init__()
        self.bits = bits
        self.multi_label = multi_label
        self.streams = nn.ModuleDict(streams)
        self.cfg = loss
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

    @property
    def modalities(self) -> list[str]:
        return list(self.streams)

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Continuous (tanh) codes of one modality."""
        return self.streams[modality](x)

    def set_epoch(self, epoch: int) -> None:
        """Sharpen every hash layer's tanh for this epoch (continuation)."""
        beta = (1.0 + self.cfg.tanh_scale_growth * epoch) ** 0.5
        for module in self.modules():
            if isinstance(module, HashHead):
                module.beta.fill_(beta)

    def init_banks(self, n_train: int, device: torch.device) -> None:
        """Start every modality's memory bank at random signs."""
        gen = torch.Generator().manual_seed(0)
        for m in self.modalities:
            bank = torch.randint(0, 2, (n_train, self.bits), generator=gen).float() * 2 - 1
            self.banks[m] = bank.to(device)

    def training_loss(
        self,
        batch: dict[str, torch.Tensor],
        index: torch.Tensor,
        labels: torch.Tensor,
        all_labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Named loss terms for a batch of paired items (`index` are their training-set rows)."""
        cfg = self.cfg
        codes = {m: self.encode(m, x) for m, x in batch.items()}
        for m, h in codes.items():
            # Under mixed precision h is bfloat16; the bank keeps float32.
            self.banks[m][index] = h.detach().to(self.banks[m].dtype)
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
