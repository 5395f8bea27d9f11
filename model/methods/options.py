"""Every method's own config section: `[dsmhn]` in a config file, `--set dsmhn.KEY=VALUE`.

Torch-free (model.config reads them through model.methods.registry). A section is a
dataclass deriving from `Section`: its fields are the keys (types checked from their
defaults), `rules()` gives ranges and choices, `check()` anything that spans keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from model.checks import ConfigError, Rule, Section, at_least, check_arguments, one_of


@dataclass
class DSMHNConfig(Section):
    """[dsmhn]: DSMHN's loss terms, their weights and the tanh continuation."""

    similarity: str = "pairwise_nll"  # pairwise_nll | contrastive | triplet | tie_aware_ap
    similarity_params: dict[str, Any] = field(default_factory=dict)
    w_similarity: float = 1.0
    w_ranking: float = 0.0  # a tie-aware AP term added to the similarity loss; 0: off
    w_intra: float = 0.0
    w_semantic: float = 1.0
    w_quantization: float = 0.1
    w_balance: float = 0.01
    shared_label_head: bool = True
    binary_bank: bool = False  # match each batch against the signs of the other modality's codes
    tanh_scale_growth: float = 0.0  # tanh(beta x) with beta = sqrt(1 + growth * epoch); 0: off

    def rules(self) -> dict[str, Rule]:
        from model.losses import SIMILARITY_LOSSES  # torch: only once a config is checked

        rules = {"similarity": one_of(SIMILARITY_LOSSES), "tanh_scale_growth": at_least(0)}
        for f in dataclasses.fields(self):
            if f.name.startswith("w_"):
                rules[f.name] = at_least(0)
        return rules

    def check(self, where: str) -> None:
        """similarity_params must be arguments the chosen loss takes, with values it accepts."""
        from model.losses import SIMILARITY_LOSSES, make_similarity_loss

        self.similarity_params = check_arguments(
            self.similarity_params,
            SIMILARITY_LOSSES[self.similarity],
            f"{where}similarity_params",
            f"{where}similarity = {self.similarity!r}",
        )
        try:  # the loss's own checks (e.g. alpha > 0) now, not after feature extraction
            make_similarity_loss(self.similarity, **self.similarity_params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}similarity_params for {self.similarity!r}: {exc}") from None


@dataclass
class DJSRHConfig(Section):
    """[djsrh]: DJSRH's joint-semantics matrix, loss weights, optimiser and schedule.

    Defaults are the reference code's MIRFlickr setting (zzs1994/DJSRH settings.py), but for
    the cosine schedule (the reference keeps its learning rates constant).
    """

    beta: float = 0.9  # weight of the media (image/video) similarity in the fused matrix
    eta: float = 0.4  # weight of the second-order (neighbourhood) term
    mu: float = 1.5  # scale of the joint-semantics matrix
    lambda_media: float = 0.1  # intra-modal term of the image / video codes (lambda1)
    lambda_text: float = 0.1  # intra-modal term of the text codes (lambda2)
    optimizer: str = "sgd"  # sgd (the reference's, with momentum) | adam
    image_lr: float = 0.001  # learning rates per stream (train.lr is DSMHN's)
    video_lr: float = 0.001
    text_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine (annealed over train.epochs) | constant (the reference)

    def rules(self) -> dict[str, Rule]:
        share = Rule(lambda v: 0 <= v <= 1, "between 0 and 1")
        positive = Rule(lambda v: v > 0, "above 0")
        return {
            "beta": share,
            "eta": share,
            "mu": positive,
            "lambda_media": at_least(0),
            "lambda_text": at_least(0),
            "optimizer": one_of(("sgd", "adam")),
            "image_lr": positive,
            "video_lr": positive,
            "text_lr": positive,
            "momentum": Rule(lambda v: 0 <= v < 1, "at least 0 and below 1"),
            "weight_decay": at_least(0),
            "schedule": one_of(("cosine", "constant")),
        }


@dataclass
class DDCMHConfig(Section):
    """[ddcmh]: DDCMH's three stages (initial text codes, media network, text network).

    Each stage is Adam at train.lr (train.weight_decay) with a cosine schedule over its own
    epochs; train.epochs is not read.
    """

    initial: str = "labels"  # stage 1: labels (a text network on the label loss) | itq
    initial_epochs: int = 20  # stage 1's epochs with initial = "labels" (ITQ has none)
    media_epochs: int = 20  # stage 2: the image (or clip) network fits the initial codes
    text_epochs: int = 20  # stage 3: the text network fits the reconstructed codes
    w_label: float = 1.0  # stage 1: label loss on the text codes
    w_pairwise: float = 1.0  # stage 1: label-similarity NLL within the batch's text codes; 0: off
    fit: str = "logistic"  # stages 2 and 3: logistic (per-bit cross-entropy) | squared
    #: Stage 3's targets: sign(media outputs + keep_initial * initial codes); 0 takes the media
    #: network's codes as they are, above 0 keeps an initial bit where the media network is
    #: less sure than that.
    keep_initial: float = 0.0
    w_quantization: float = 0.1  # every stage
    w_balance: float = 0.01  # every stage
    itq_iterations: int = 50

    def rules(self) -> dict[str, Rule]:
        return {
            "initial": one_of(("labels", "itq")),
            "initial_epochs": at_least(1),
            "media_epochs": at_least(1),
            "text_epochs": at_least(1),
            "w_label": at_least(0),
            "w_pairwise": at_least(0),
            "fit": one_of(("logistic", "squared")),
            "keep_initial": Rule(lambda v: 0 <= v < 1, "at least 0 and below 1"),
            "w_quantization": at_least(0),
            "w_balance": at_least(0),
            "itq_iterations": at_least(1),
        }

    def check(self, where: str) -> None:
        """Labels-mode stage 1 must train on something."""
        if self.initial == "labels" and not (self.w_label or self.w_pairwise):
            raise ConfigError(
                f"{where}w_label and {where}w_pairwise are both 0: stage 1 (initial = "
                "'labels') would train the text network on nothing; set one above 0"
            )


@dataclass
class DVSHConfig(Section):
    """[dvsh]: DVSH's fusion network, its margins and the weights of its loss terms.

    The image and sentence streams are the run's [image] and [text] sections (DVSH needs
    text.encoder = "recurrent"); the fusion network runs the same cell as the sentence
    stream over its word embeddings with the image's features at every step.
    """

    margin_joint: float = 0.3  # cosine margin between matches and non-matches, joint embedding
    margin_code: float = 0.3  # the same, image codes against text codes and back
    w_joint: float = 1.0  # structured max-margin loss of the joint embedding
    w_cross: float = 1.0  # structured max-margin loss of the codes, each direction
    w_fit: float = 1.0  # each modality's codes to the signs of the joint embedding
    fusion_hidden: int = 512  # the fusion cell's state width
    image_projection: int = 256  # image features projected into the fusion cell's input
    dropout: float = 0.1  # on the fusion cell's pooled state

    def rules(self) -> dict[str, Rule]:
        margin = Rule(lambda v: 0 < v <= 2, "above 0 and at most 2 (cosines differ by 2 at most)")
        return {
            "margin_joint": margin,
            "margin_code": margin,
            "w_joint": at_least(0),
            "w_cross": at_least(0),
            "w_fit": at_least(0),
            "fusion_hidden": at_least(1),
            "image_projection": at_least(1),
            "dropout": Rule(lambda v: 0 <= v < 1, "at least 0 and below 1"),
        }

    def check_run(self, config: Any) -> None:
        """DVSH pairs an image stream with a recurrent sentence stream."""
        if sorted(config.data.modalities) != ["image", "text"]:
            raise ConfigError(
                f"method 'dvsh' pairs images with sentences: data.modalities must be "
                f"['image', 'text'], got {config.data.modalities}"
            )
        if config.text.encoder != "recurrent":
            raise ConfigError(
                f"method 'dvsh' trains a recurrent sentence stream: set text.encoder = "
                f"'recurrent' (got {config.text.encoder!r})"
            )
