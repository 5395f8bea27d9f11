"""DJSRH (Su, Zhong & Zhang, ICCV 2019): unsupervised, trained on the pairs alone.

Each batch's frozen input features give the joint-semantics matrix S (model.joint_semantics);
the streams' normalised codes are trained to reconstruct it across and within modalities.
It needs no labels (the trainer gives it none), so a manifest may leave them out, and
shuffling a manifest's labels changes nothing it trains on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from model.hashing import HashHead
from model.joint_semantics import (
    alpha_for_epoch,
    feature_similarity,
    fused_similarity,
    joint_semantics,
    reconstruction_terms,
)
from model.methods.base import Batch, Method, MethodSetup, Optimizer, Stage
from model.methods.options import DJSRHConfig
from model.streams import ImageTailStream, VideoStream


def similarity_features(stream: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The frozen features a batch's similarities are measured on: a stream's own inputs,
    average-pooled where they are feature maps (clips' frames, a fine-tuned trunk's input)."""
    if isinstance(stream, VideoStream):
        clips, frames, c, h, w = stream.map_shape
        return x.float().reshape(-1, clips * frames, c, h * w).mean(dim=(1, 3))
    if isinstance(stream, ImageTailStream):
        c, h, w = stream.map_shape
        return x.float().reshape(-1, c, h * w).mean(dim=2)
    return x.float()


class DJSRH(Method):
    """One stream per modality and the DJSRH objective; one stage, no labels."""

    needs_labels = False

    def __init__(self, streams: Mapping[str, nn.Module], setup: MethodSetup) -> None:
        super().__init__(streams)
        self.cfg: DJSRHConfig = setup.options
        self.epochs = setup.train.epochs

    def stages(self) -> list[Stage]:
        cfg, epochs = self.cfg, self.epochs
        schedule = (
            (lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs))
            if cfg.schedule == "cosine"
            else None
        )
        return [
            Stage(
                name="joint",
                epochs=epochs,
                parameters=list(self.parameters()),
                optimizer=self._optimizer,
                schedule=schedule,
            )
        ]

    def _optimizer(self, parameters: Iterable[nn.Parameter]) -> Optimizer:
        """SGD with momentum (or Adam), a learning rate per stream, as the reference has one
        for its image and one for its text network."""
        cfg = self.cfg
        lrs = {"image": cfg.image_lr, "video": cfg.video_lr, "text": cfg.text_lr}
        given = {id(p) for p in parameters}
        groups = [
            {"params": [p for p in stream.parameters() if id(p) in given], "lr": lrs[m]}
            for m, stream in self.streams.items()
        ]
        if cfg.optimizer == "adam":
            return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def start_epoch(self, stage: str, epoch: int) -> None:
        """alpha = sqrt(epoch + 1) in every hash head's tanh(alpha h), as the reference has."""
        alpha = alpha_for_epoch(epoch)
        for module in self.modules():
            if isinstance(module, HashHead):
                module.beta.fill_(alpha)

    def target(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The batch's joint-semantics matrix S from the frozen input features."""
        with torch.no_grad():
            sims = {
                m: feature_similarity(similarity_features(self.streams[m], x))
                for m, x in inputs.items()
            }
            return joint_semantics(fused_similarity(sims, self.cfg.beta), self.cfg.mu, self.cfg.eta)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named loss terms of a batch of pairs: codes reconstructing S across and within."""
        target = self.target(batch.inputs)
        # The streams' heads already give tanh(alpha h): only the normalisation is left.
        codes = {m: F.normalize(self.encode(m, x).float(), dim=1) for m, x in batch.inputs.items()}
        cfg = self.cfg
        weights = {m: cfg.lambda_text if m == "text" else cfg.lambda_media for m in codes}
        return reconstruction_terms(codes, target, weights)
