"""DDCMH (Chen, Yu, Li, Nie & Xu, AAAI 2018): three stages, no pairwise term across modalities.

1. "initial": codes for the training items from the text side alone. With initial = "labels"
   the text stream is trained on the label loss (a classifier on its codes, and a label-
   similarity NLL within each batch of text codes), and its codes' signs are kept; with
   initial = "itq" they are ITQ codes of the text features (model.itq): no epochs, no labels.
2. "image" (or "video"): the media stream is trained to give every training item its initial
   code (a per-bit fit: model.losses.code_fit_loss).
3. "text": the codes are reconstructed from the media stream's outputs on the training items,
   B = sign(F + keep_initial * B_initial), and the text stream is trained to give them.

The reconstruction: with keep_initial = 0 (the default) it is the media network's own codes.
The text network is then trained on exactly the codes that images give their training items,
so database texts and query images meet in the media network's code space; bits of the
initial codes that images cannot predict (tag noise) are replaced by what images support
rather than copied into the text network a second time. keep_initial > 0 keeps an initial
bit wherever the media output is less sure than keep_initial (|F| < keep_initial).

The text stream starts stage 3 from its stage 1 weights (with "labels"). Every stage's codes
are kept in the checkpoint (`training_state`), so a run resumes between and within stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from model.checks import ConfigError
from model.hashing import LabelHead
from model.itq import itq_codes, signs
from model.losses import (
    PairwiseNLLLoss,
    bit_balance_loss,
    code_fit_loss,
    label_similarity,
    quantization_loss,
    semantic_label_loss,
)
from model.methods.base import Batch, Method, MethodSetup, Stage, TrainingSet, adam_cosine_stage
from model.methods.options import DDCMHConfig

#: Training items encoded at once when a stage's codes are computed.
_CHUNK = 1024


class DDCMH(Method):
    """A text and a media stream trained one after the other; see the module docstring."""

    def __init__(self, streams: Mapping[str, nn.Module], setup: MethodSetup) -> None:
        super().__init__(streams)
        media = [m for m in streams if m != "text"]
        if "text" not in streams or len(media) != 1:
            raise ConfigError(
                "method 'ddcmh' trains a text and one image or video stream, not "
                f"{', '.join(streams)}; set data.modalities to text and image (or video)"
            )
        self.media = media[0]
        self.cfg: DDCMHConfig = setup.options
        self.bits = setup.bits
        self.multi_label = setup.multi_label
        self.train_config = setup.train
        if self.cfg.initial == "labels":
            self.label_head = LabelHead(setup.bits, setup.num_labels)
        self.pairwise = PairwiseNLLLoss(balance=True)
        self.initial: Tensor | None = None  # stage 1's codes, by training position
        self.reconstructed: Tensor | None = None  # stage 3's targets

    @classmethod
    def labels_needed(cls, options: Any) -> bool:
        """Only stage 1 with initial = "labels" reads labels; with ITQ none are given."""
        return bool(options.initial == "labels")

    def stages(self) -> list[Stage]:
        cfg = self.cfg
        if cfg.initial == "labels":
            text = [*self.stream("text").parameters(), *self.label_head.parameters()]
            initial = self._stage("initial", cfg.initial_epochs, text)
        else:
            initial = Stage("initial", 0, [], None)
        return [
            initial,
            self._stage(self.media, cfg.media_epochs, list(self.stream(self.media).parameters())),
            self._stage("text", cfg.text_epochs, list(self.stream("text").parameters())),
        ]

    def _stage(self, name: str, epochs: int, parameters: list[nn.Parameter]) -> Stage:
        return adam_cosine_stage(name, epochs, parameters, self.train_config)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """The named terms of the batch's stage: label loss (1), or a fit to codes (2, 3)."""
        cfg = self.cfg
        if batch.stage == "initial":
            return self._initial_step(batch)
        if batch.stage == self.media:
            targets, modality = self.initial, self.media
        else:
            targets, modality = self.reconstructed, "text"
        assert targets is not None  # the stage before computed them
        h = self.encode(modality, batch.inputs[modality]).float()
        fit = code_fit_loss(h, targets[batch.positions], cfg.fit)
        quant, balance = quantization_loss(h), bit_balance_loss(h)
        total = fit + cfg.w_quantization * quant + cfg.w_balance * balance
        return {
            f"fit/{modality}": fit,
            f"quant/{modality}": quant,
            f"balance/{modality}": balance,
            "total": total,
        }

    def _initial_step(self, batch: Batch) -> dict[str, Tensor]:
        """Stage 1 with labels: the text codes classify the labels and keep their similarity."""
        assert batch.labels is not None  # labels_needed
        cfg = self.cfg
        h = self.encode("text", batch.inputs["text"]).float()
        terms: dict[str, Tensor] = {}
        total = torch.zeros((), device=h.device)
        if cfg.w_label:
            terms["label/text"] = semantic_label_loss(
                self.label_head(h), batch.labels, self.multi_label
            )
            total = total + cfg.w_label * terms["label/text"]
        if cfg.w_pairwise:
            # Within the batch and within the text modality only: O(batch^2) per step.
            s = label_similarity(batch.labels, batch.labels)
            terms["pairwise/text"] = self.pairwise(h, h, s)
            total = total + cfg.w_pairwise * terms["pairwise/text"]
        terms["quant/text"], terms["balance/text"] = quantization_loss(h), bit_balance_loss(h)
        terms["total"] = (
            total + cfg.w_quantization * terms["quant/text"] + cfg.w_balance * terms["balance/text"]
        )
        return terms

    def start_stage(self, stage: str, data: TrainingSet) -> None:
        """With initial = "itq", stage 1 is ITQ of the training items' text features."""
        if stage != "initial" or self.cfg.initial != "itq":
            return
        # The trainer seeds torch as each stage starts: ITQ's start rotation follows the run.
        seed = int(torch.randint(0, 2**31 - 1, ()))
        features = data.inputs["text"][data.rows]
        try:
            codes = itq_codes(features, self.bits, self.cfg.itq_iterations, seed)
        except ValueError as exc:
            raise ConfigError(f"ddcmh.initial = 'itq': {exc}; use fewer bits") from None
        self.initial = codes.to(data.device)

    def end_stage(self, stage: str, data: TrainingSet) -> None:
        """Keep the codes the next stage trains on: the initial codes, then the reconstructed."""
        if stage == "initial" and self.cfg.initial == "labels":
            self.initial = signs(self.outputs("text", data))
        elif stage == self.media:
            assert self.initial is not None
            media = self.outputs(self.media, data)
            self.reconstructed = signs(media + self.cfg.keep_initial * self.initial)

    @torch.no_grad()
    def outputs(self, modality: str, data: TrainingSet) -> Tensor:
        """`modality`'s continuous codes (float32) of every training item, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            parts = []
            for start in range(0, len(data), _CHUNK):
                positions = torch.arange(start, min(start + _CHUNK, len(data)), device=data.device)
                x = data.inputs_at(positions)[modality]
                parts.append(self.encode(modality, x).float())
            return torch.cat(parts)
        finally:
            self.train(was_training)

    def training_state(self) -> dict[str, Any]:
        return {
            "initial": None if self.initial is None else self.initial.cpu(),
            "reconstructed": None if self.reconstructed is None else self.reconstructed.cpu(),
        }

    def load_training_state(self, state: dict[str, Any], device: torch.device) -> None:
        self.initial, self.reconstructed = (
            None if state[key] is None else state[key].to(device)
            for key in ("initial", "reconstructed")
        )
