"""DVSH (Cao, Long, Wang, Yang & Yu, KDD 2016): Deep Visual-Semantic Hashing.

Three networks train together. A visual-semantic fusion network reads each image-sentence
pair, a recurrent cell over the sentence's word embeddings with the image's CNN features fed
in at every step, into a joint embedding in (-1, 1)^bits. Two modality-specific hashing
networks, the image stream (CNN features -> MLP -> hash) and the sentence stream (word ids ->
embeddings -> GRU/LSTM -> MLP -> hash), are what gets exported: each must encode its
modality alone, with no pair to fuse. The objective is structured max-margin, in the joint
embedding and in the codes (items sharing a label closer than items sharing none, by a
cosine margin), and each stream's codes fit the signs of the pair's joint embedding.

The word embeddings are trained from scratch and shared by the sentence stream and the
fusion network.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from model.checks import ConfigError
from model.hashing import HashHead
from model.losses import label_similarity, structured_margin_loss
from model.methods.base import Batch, Method, MethodSetup, Stage, adam_cosine_stage
from model.methods.options import DVSHConfig
from model.streams import SentenceStream, pool_states, run_cell


def hash_head(stream: nn.Module) -> HashHead:
    """The hash head of a stream (the layer its `features` feed)."""
    heads = [m for m in stream.modules() if isinstance(m, HashHead)]
    if len(heads) != 1 or not hasattr(stream, "features"):
        raise ConfigError(
            f"method 'dvsh' needs an image stream over CNN features, not {type(stream).__name__}"
        )
    return heads[0]


class Fusion(nn.Module):
    """The visual-semantic fusion network: a cell over [word embedding; image projection]."""

    def __init__(self, text: SentenceStream, image_width: int, cfg: DVSHConfig, bits: int) -> None:
        super().__init__()
        self.pooling = text.pooling
        self.image = nn.Sequential(nn.Linear(image_width, cfg.image_projection), nn.ReLU())
        cell = type(text.rnn)
        self.rnn = cell(
            text.embedding.embedding_dim + cfg.image_projection,
            cfg.fusion_hidden,
            batch_first=True,
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.fusion_hidden, bits)

    def forward(
        self, words: torch.Tensor, lengths: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """Joint embeddings (n, bits) in (-1, 1) of embedded sentences and image features."""
        picture = self.image(image).unsqueeze(1).expand(-1, words.shape[1], -1)
        states = run_cell(self.rnn, torch.cat([words, picture], dim=2), lengths, packed=True)
        pooled = pool_states(states, lengths, self.pooling)
        return torch.tanh(self.out(self.dropout(pooled)))


class DVSH(Method):
    """Image and sentence hashing streams, the fusion network and DVSH's objective."""

    def __init__(self, streams: Mapping[str, nn.Module], setup: MethodSetup) -> None:
        super().__init__(streams)
        text, image = streams.get("text"), streams.get("image")
        if not isinstance(text, SentenceStream) or image is None:
            raise ConfigError(
                "method 'dvsh' needs an image stream and a recurrent sentence stream: "
                "data.modalities = ['image', 'text'] and text.encoder = 'recurrent'"
            )
        self.cfg: DVSHConfig = setup.options
        self.train_config = setup.train
        width = hash_head(image).proj.in_features
        self.fusion = Fusion(text, width, self.cfg, setup.bits)

    def stages(self) -> list[Stage]:
        train = self.train_config
        return [adam_cosine_stage("joint", train.epochs, list(self.parameters()), train)]

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Joint embeddings and both streams' codes of a batch of pairs, and the loss terms."""
        assert batch.labels is not None  # needs_labels
        image_stream, text_stream = self.streams["image"], self.streams["text"]
        assert isinstance(text_stream, SentenceStream)
        tokens = batch.inputs["text"]
        # Training rows are padded to text.max_length: the batch's longest text is enough, and
        # the cells skip the padding (packed sequences).
        width = int(tokens[:, 0].max().clamp(min=1))

        def pairs(tokens: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            """Each pair's image codes, sentence codes and joint embedding."""
            words, lengths = text_stream.embed(tokens)
            pictures = image_stream.features(images)  # type: ignore[operator]
            return (
                hash_head(image_stream)(pictures),
                text_stream.codes(words, lengths, packed=True),
                self.fusion(words, lengths, pictures),
            )

        image, text, joint = self.per_row(pairs, tokens[:, : 1 + width], batch.inputs["image"])
        return self.objective(joint, {"image": image, "text": text}, batch.labels)

    def objective(
        self, joint: torch.Tensor, codes: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Named loss terms and their weighted "total"; items sharing a label match."""
        cfg = self.cfg
        s = label_similarity(labels, labels)
        terms = {"margin/joint": structured_margin_loss(joint, joint, s, cfg.margin_joint, True)}
        total = cfg.w_joint * terms["margin/joint"]
        target = torch.where(joint >= 0, 1.0, -1.0).to(joint.dtype).detach()
        for m, other in (("image", "text"), ("text", "image")):
            term = structured_margin_loss(codes[m], codes[other], s, cfg.margin_code)
            fit = (codes[m] - target).square().mean()
            terms[f"margin/{m}-{other}"], terms[f"fit/{m}"] = term, fit
            total = total + cfg.w_cross * term + cfg.w_fit * fit
        terms["total"] = total
        return terms
