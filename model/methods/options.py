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
