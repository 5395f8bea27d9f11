"""DVSH: the structured max-margin loss by hand, the method through the trainer, its export.

The sentence encoder's export is checked bit for bit against the eager stream rebuilt from
the checkpoint, on batches of several widths (the service pads each batch to its longest
text), and the word ids training used are the ones the bundle's input kind gives.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.inputs import TokenIds
from bundle.text import Vocabulary
from model.checkpoint import load_checkpoint, trained_method
from model.config import ConfigError, config_from_dict
from model.hashing import pack_bits
from model.losses import structured_margin_loss
from model.methods.dvsh import DVSH
from model.prepare import prepare
from model.streams import SentenceStream
from model.train import TrainResult, train
from tests.support.dvsh_run import dvsh_config
from tests.support.interrupted import train_until


def test_structured_margin_loss_by_hand() -> None:
    # Cosines: u0 = (1, 0) against v = (1, 0), (3, 4), (0, 1) is 1, 0.6, 0;
    # u1 = (0, 2) against them is 0, 0.8, 1.
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    v = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    s = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    # Anchor 0: matches 0, 1, non-match 2: relu(0.5 - 1 + 0) = 0, relu(0.5 - 0.6 + 0) = 0.
    # Anchor 1: match 1, non-matches 0, 2: relu(0.5 - 0.8 + 0) = 0, relu(0.5 - 0.8 + 1) = 0.7.
    # Mean over the 4 triplets: 0.7 / 4.
    loss = structured_margin_loss(u, v, s, margin=0.5)
    assert loss.item() == pytest.approx(0.175, abs=1e-6)
    # A margin of 0.1 leaves only anchor 1's (match 1, non-match 2): 0.1 - 0.8 + 1 = 0.3.
    assert structured_margin_loss(u, v, s, margin=0.1).item() == pytest.approx(0.075, abs=1e-6)


def test_structured_margin_loss_against_itself_by_hand() -> None:
    # Items 0 and 1 share a label, item 2 shares none. Cosines: c01 = 0.6, c02 = 0, c12 = 0.8.
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    s = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # Without self-matches: anchor 0 -> (1, 2): relu(0.5 - 0.6 + 0) = 0; anchor 1 -> (0, 2):
    # relu(0.5 - 0.6 + 0.8) = 0.7; anchor 2 has no match: 0.7 over 2 triplets.
    assert structured_margin_loss(z, z, s, 0.5, exclude_self=True).item() == pytest.approx(0.35)
    # With them, 6 triplets: anchor 0 adds (0, 2): 0; anchor 1 adds (1, 2): 0.5 - 1 + 0.8 = 0.3;
    # anchor 2 has (2, 0): 0.5 - 1 + 0 -> 0 and (2, 1): 0.3. (0.7 + 0.3 + 0.3) / 6.
    assert structured_margin_loss(z, z, s, 0.5).item() == pytest.approx(1.3 / 6)


def test_structured_margin_loss_matches_a_brute_force_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(5, 8, generator=gen), torch.randn(7, 8, generator=gen)
    s = (torch.rand(5, 7, generator=gen) < 0.4).float()
    cos = torch.nn.functional.cosine_similarity(u[:, None], v[None], dim=2)
    hinges = [
        max(0.0, 0.3 - cos[i, j].item() + cos[i, k].item())
        for i, j, k in itertools.product(range(5), range(7), range(7))
        if s[i, j] == 1 and s[i, k] == 0
    ]
    loss = structured_margin_loss(u, v, s, margin=0.3)
    assert loss.item() == pytest.approx(sum(hinges) / len(hinges), abs=1e-6)
    # No match or no non-match anywhere: no triplet, a zero loss with a finite gradient.
    u.requires_grad_(True)
    empty = structured_margin_loss(u, v, torch.ones(5, 7), margin=0.3)
    empty.backward()
    assert empty.item() == 0 and bool(torch.isfinite(u.grad).all())  # type: ignore[arg-type]


def test_dvsh_config_needs_a_recurrent_sentence_stream(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="text.encoder = 'recurrent'"):
        dvsh_config(tmp_path / "m.csv", tmp_path, text={"encoder": "bag_of_words"})
    with pytest.raises(ConfigError, match=r"data.modalities must be \['image', 'text'\]"):
        dvsh_config(tmp_path / "m.csv", tmp_path, data={"modalities": ["text"]})
    with pytest.raises(ConfigError, match="dvsh.margin_code must be above 0"):
        dvsh_config(tmp_path / "m.csv", tmp_path, dvsh={"margin_code": 0.0})
    with pytest.raises(ConfigError, match="text.cell must be one of gru, lstm"):
        dvsh_config(tmp_path / "m.csv", tmp_path, text={"encoder": "recurrent", "cell": "rnn"})


def test_training_lowers_every_term_and_stores_the_word_ids(dvsh_trained: TrainResult) -> None:
    first, last = dvsh_trained.history[0]["loss"], dvsh_trained.history[-1]["loss"]
    assert set(last) == {
        "margin/joint",
        "margin/image-text",
        "margin/text-image",
        "fit/image",
        "fit/text",
        "total",
    }
    assert last["total"] < first["total"]
    assert last["margin/image-text"] < first["margin/image-text"]
    state = load_checkpoint(dvsh_trained.run_dir)
    assert state["kinds"] == {"image": "pixels", "text": "token_ids"}
    vocabulary = Vocabulary.from_json(state["vocabulary"])
    assert state["input_dims"]["text"] == len(vocabulary) + 2  # the ids it embeds
    # The trained method holds the fusion network beside the two exported streams.
    method = trained_method(state, config_from_dict(state["config"]), dvsh_trained.run_dir)
    assert isinstance(method, DVSH) and isinstance(method.stream("text"), SentenceStream)
    assert any(name.startswith("fusion.") for name in method.state_dict())


def test_resume_equals_an_uninterrupted_run(
    dvsh_trained: TrainResult,
    dvsh_scenes: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopped after epoch 4 of 8 and resumed: the same weights (fusion network included),
    optimiser moments and history as the session's uninterrupted run."""
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        train_until(dvsh_config(dvsh_scenes, tmp_path / "cache"), run, 4, monkeypatch)
        assert load_checkpoint(run)["epoch"] == 4
        resumed = train(config_from_dict({}), run, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert resumed.history == dvsh_trained.history
    a, b = load_checkpoint(dvsh_trained.run_dir), load_checkpoint(run)
    assert a["model"].keys() == b["model"].keys()
    assert any(key.startswith("fusion.") for key in a["model"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, moments in a["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][k][name])
            )


def test_training_rows_are_the_kinds_word_ids(dvsh_trained: TrainResult) -> None:
    state = load_checkpoint(dvsh_trained.run_dir)
    config = config_from_dict(state["config"])
    prepared = prepare(config, Vocabulary.from_json(state["vocabulary"]))
    kind = TokenIds(Vocabulary.from_json(state["vocabulary"]), config.text.max_length)
    assert prepared.data.texts is not None
    rows = prepared.inputs["text"]
    assert rows.dtype == np.int64 and rows.shape == (96, 1 + config.text.max_length)
    # The same ids, only padded to max_length; narrower batches encode to the same codes.
    again = kind.vectorize(prepared.data.texts, width=config.text.max_length)[0]
    assert np.array_equal(rows, again)
    assert rows[:, 0].max() <= config.text.max_length and rows[:, 0].min() >= 1


def _eager_text_codes(run_dir: Path, batch: np.ndarray) -> np.ndarray:
    state = load_checkpoint(run_dir)
    method = trained_method(state, config_from_dict(state["config"]), run_dir)
    with torch.inference_mode():
        return pack_bits(method.encode("text", torch.from_numpy(batch))).numpy()


def test_sentence_encoder_export_is_bit_identical(
    dvsh_bundle: Path, dvsh_trained: TrainResult
) -> None:
    manifest = json.loads((dvsh_bundle / "manifest.json").read_text())
    text = manifest["modalities"]["text"]
    assert (manifest["method"], text["input"], text["cell"]) == ("dvsh", "token_ids", "gru")
    assert (text["max_length"], text["pad_id"], text["unknown_id"]) == (12, 0, 1)
    assert text["num_ids"] == len(text["vocabulary"]["tokens"]) + 2
    assert manifest["modalities"]["image"]["input"] == "pixels"
    assert sorted(p.name for p in dvsh_bundle.iterdir()) == ["image.pt", "manifest.json", "text.pt"]
    kind = TokenIds(Vocabulary.from_json(text["vocabulary"]), text["max_length"])
    traced = torch.jit.load(str(dvsh_bundle / "text.pt"))
    texts = [
        "a green triangle next to an orange star",
        "orange star",
        "",
        "words it never saw",
        "green " * 40,
        "Çà et là, 猫 🐈",
    ]
    batch = kind.vectorize(texts)[0]
    wider = kind.collate([batch, np.zeros((1, batch.shape[1] + 7), np.int64)])
    for tokens in (batch, batch[:1], batch[4:], wider, kind.vectorize(["star"])[0]):
        with torch.inference_mode():
            exported = traced(torch.from_numpy(tokens)).numpy()
            codes, values = traced.codes_and_values(torch.from_numpy(tokens))
        eager = _eager_text_codes(dvsh_trained.run_dir, tokens)
        assert exported.dtype == np.uint8 and exported.shape == (len(tokens), 2)
        assert np.array_equal(exported, eager)
        assert np.array_equal(codes.numpy(), eager) and values.dtype == torch.float32
    # Padding a batch wider than its longest text changes no code.
    with torch.inference_mode():
        padded = traced(torch.from_numpy(wider)).numpy()[: len(texts)]
    assert np.array_equal(padded, traced(torch.from_numpy(batch)).numpy())
    # A trained model, not a constant: the texts do not all get one code.
    assert len({bytes(c) for c in padded}) > 2


@pytest.mark.parametrize(("cell", "pooling"), [("gru", "mean"), ("gru", "last"), ("lstm", "last")])
def test_training_on_packed_sequences_reads_the_served_states(cell: str, pooling: str) -> None:
    torch.manual_seed(0)
    stream = SentenceStream(30, 8, cell, 16, pooling, [16], 16, 0.0).eval()
    kind = TokenIds(Vocabulary([f"w{i}" for i in range(28)]), max_length=9)
    texts = ["w1 w2 w3", "", "w4 " * 12, "w5 unknown w6", "w7"]
    tokens = torch.from_numpy(kind.vectorize(texts, width=12)[0])
    with torch.no_grad():
        embedded, lengths = stream.embed(tokens)
        served, packed = stream(tokens), stream.codes(embedded, lengths, packed=True)
    assert lengths.tolist() == [3, 0, 9, 3, 1]
    torch.testing.assert_close(packed, served, atol=1e-6, rtol=0)
