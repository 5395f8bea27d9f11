"""DJSRH (Su, Zhong & Zhang, ICCV 2019): unsupervised, trained on the pairs alone.

Each batch's frozen input features give the joint-semantics matrix S (model.joint_semantics);
the streams' normalised codes are trained to reconstruct it across and within modalities.
No labels are read anywhere, so a manifest needs none, and shuffling its labels changes
nothing the method sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import DJSRHConfig
from model.hashing import HashHead
from model.joint_semantics import (
    alpha_for_epoch,
    feature_similarity,
    fused_similarity,
    joint_semantics,
    reconstruction_terms,
)
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


class DJSRH(nn.Module):
    """One stream per modality and the DJSRH objective; needs no labels."""

    needs_labels = False

    def __init__(self, streams: dict[str, nn.Module], bits: int, config: DJSRHConfig) -> None:
        super().__init__()
        self.bits = bits
        self.streams = nn.ModuleDict(streams)
        self.cfg = config
        self.alpha = 1.0
        # The trainer's resume state; DJSRH keeps none beyond weights and optimiser.
        self.banks: dict[str, torch.Tensor] = {}

    @property
    def modalities(self) -> list[str]:
        return list(self.streams)

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Continuous codes tanh(alpha h) of one modality (their signs are the hash codes)."""
        return self.streams[modality](x)

    def set_epoch(self, epoch: int) -> None:
        """alpha = sqrt(epoch + 1), set in every hash head's tanh, as the reference does."""
        self.alpha = alpha_for_epoch(epoch)
        for module in self.modules():
            if isinstance(module, HashHead):
                module.beta.fill_(self.alpha)

    def init_banks(self, n_train: int, device: torch.device) -> None:
        """No memory banks: every term is within the batch."""

    def optimizer(self) -> torch.optim.Optimizer:
        """SGD with momentum (or Adam), a learning rate per stream (the reference's image and
        text lrs)."""
        cfg = self.cfg
        lrs = {"image": cfg.image_lr, "video": cfg.video_lr, "text": cfg.text_lr}
        groups = [
            {"params": list(stream.parameters()), "lr": lrs[m]}
            for m, stream in self.streams.items()
        ]
        if cfg.optimizer == "adam":
            return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's joint-semantics matrix S from the frozen input features."""
        with torch.no_grad():
            sims = {
                m: feature_similarity(similarity_features(self.streams[m], x))
                for m, x in batch.items()
            }
            return joint_semantics(fused_similarity(sims, self.cfg.beta), self.cfg.mu, self.cfg.eta)

    def training_loss(
        self, batch: dict[str, torch.Tensor], *_unused_label_arguments: object
    ) -> dict[str, torch.Tensor]:
        """Named loss terms for a batch of pairs; labels, if the trainer passes any, are unused."""
        target = self.target(batch)
        # The streams' heads already give tanh(alpha h): only the normalisation is left.
        codes = {m: F.normalize(self.encode(m, x).float(), dim=1) for m, x in batch.items()}
        weights = {m: self.cfg.lambda_text if m == "text" else self.cfg.lambda_media for m in codes}
        return reconstruction_terms(codes, target, weights)
