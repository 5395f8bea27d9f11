"""A text model on the pretrained sentence encoder: trained, exported, and served.

A tiny text-only run (captions about dogs, cars and food; text.encoder = "minilm", 16
tokens) is trained in a session fixture and exported with `model.export`. The bundle's text
encoder takes token ids and mask and runs MiniLM + MLP + hash as one traced module. It is
checked against an eager model rebuilt here from the checkpoint, against the cached features
it was trained on, and from a fresh process that never imports `model/`: there the service's
own tokenizer (from the bundle's tokenizer.json) and its HTTP encode endpoint must give the
eager model's codes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.sentence import SentenceTokenizer
from model.backbones.minilm import load_minilm, tokenizer_path
from model.build import build_method
from model.checkpoint import load_checkpoint
from model.config import config_from_dict
from model.export import export_bundle
from model.hashing import pack_bits
from model.prepare import prepare
from model.sentence_features import extract_sentence_features
from model.train import train
from service.encoders import load_bundle
from service.errors import BundleError
from tests.support.service_bundle import REPO

MAX_LENGTH = 16
CAPTIONS = {
    "dog": [
        "a dog runs across the grass",
        "a brown puppy plays with a ball",
        "two dogs chase each other in the park",
        "a black dog swims in a lake",
        "a small dog sleeps on the sofa",
        "the dog catches a frisbee",
        "a white dog barks at the mailman",
        "a dog carries a stick on the beach",
    ],
    "car": [
        "a red car parked on the street",
        "traffic jam on a busy highway",
        "a vintage car at an auto show",
        "a taxi drives through the city at night",
        "a truck and a car at the crossroads",
        "a blue sports car on a race track",
        "cars waiting at a traffic light",
        "a car covered in snow",
    ],
    "food": [
        "a plate of pasta with tomato sauce",
        "fresh fruit on a kitchen table",
        "a slice of chocolate cake",
        "a bowl of hot soup with bread",
        "people eating pizza at a restaurant",
        "a sandwich with lettuce and cheese",
        "a cup of coffee and a croissant",
        "vegetables grilling on a barbecue",
    ],
}
#: Captions the model never saw, an empty text, one far over MAX_LENGTH, out-of-vocabulary.
UNSEEN = [
    "a puppy runs on the sand",
    "a yellow bus in the town",
    "noodles in a bowl",
    "",
    "a long caption " * 20,
    "🐈 猫",
]


@pytest.fixture(scope="session")
def caption_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("captions") / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "labels"])
        for label, captions in CAPTIONS.items():
            for k, caption in enumerate(captions):
                writer.writerow([f"{label}{k}", caption, label])
    return path


@pytest.fixture(scope="session")
def sentence_run(caption_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16-bit text-only run over frozen MiniLM embeddings (a few seconds on one thread)."""
    work = tmp_path_factory.mktemp("sentence-run")
    config = config_from_dict(
        {
            "bits": 16,
            "data": {"kind": "manifest", "path": str(caption_manifest), "modalities": ["text"]},
            "text": {
                "encoder": "minilm",
                "max_length": MAX_LENGTH,
                "cache_dir": str(work / "cache"),
                "hidden": [32],
                "dropout": 0.0,
            },
            "train": {"epochs": 30, "batch_size": 8, "lr": 3e-3, "eval_every": 0, "threads": 1},
        }
    )
    threads = torch.get_num_threads()
    try:
        train(config, work / "run")
    finally:
        torch.set_num_threads(threads)
    return work / "run"


@pytest.fixture(scope="session")
def sentence_bundle(sentence_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bundle(sentence_run, tmp_path_factory.mktemp("sentence-export") / "bundle")


class EagerText:
    """The trained text stream behind MiniLM, rebuilt from the checkpoint (not model/export)."""

    def __init__(self, run_dir: Path) -> None:
        state = load_checkpoint(run_dir)
        self.config = config_from_dict(state["config"])
        method = build_method(
            self.config,
            state["input_dims"],
            state["kinds"],
            len(state["label_names"]),
            state["multi_label"],
        )
        method.load_state_dict(state["model"])
        self.stream = method.eval().stream("text")
        self.minilm = load_minilm()
        self.tokens = SentenceTokenizer(tokenizer_path(), self.config.text.max_length)

    @torch.inference_mode()
    def codes_of_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        return pack_bits(self.stream(torch.from_numpy(embeddings))).numpy()

    @torch.inference_mode()
    def codes(self, texts: list[str]) -> np.ndarray:
        ids, mask = self.tokens.encode(texts)
        embeddings = self.minilm(torch.from_numpy(ids), torch.from_numpy(mask))
        return pack_bits(self.stream(embeddings)).numpy()


@pytest.fixture(scope="session")
def eager(sentence_run: Path) -> EagerText:
    return EagerText(sentence_run)


def _all_captions() -> list[str]:
    return [c for captions in CAPTIONS.values() for c in captions]


def test_prepare_embeds_captions_as_the_sentence_kind(sentence_run: Path) -> None:
    config = config_from_dict(load_checkpoint(sentence_run)["config"])
    prepared = prepare(config)
    assert prepared.kinds == {"text": "sentence"} and prepared.vocabulary is None
    assert prepared.inputs["text"].shape == (24, 384)
    assert load_checkpoint(sentence_run)["vocabulary"] is None


def test_manifest_records_the_tokenizer(sentence_bundle: Path) -> None:
    manifest = json.loads((sentence_bundle / "manifest.json").read_text())
    text = manifest["modalities"]["text"]
    assert text["input"] == "sentence" and text["encoder"] == "all-minilm-l6-v2"
    assert (text["file"], text["tokenizer"]) == ("text.pt", "tokenizer.json")
    assert (text["max_length"], text["pad_id"], text["dtype"]) == (MAX_LENGTH, 0, "int64")
    assert sorted(p.name for p in sentence_bundle.iterdir()) == [
        "manifest.json",
        "text.pt",
        "tokenizer.json",
    ]
    copied = (sentence_bundle / "tokenizer.json").read_bytes()
    assert copied == tokenizer_path().read_bytes()
    assert manifest["files"]["tokenizer.json"] == hashlib.sha256(copied).hexdigest()
    digest = hashlib.sha256((sentence_bundle / "text.pt").read_bytes()).hexdigest()
    assert manifest["files"]["text.pt"] == digest


def test_traced_encoder_matches_eager_and_training_features(
    sentence_bundle: Path, eager: EagerText, sentence_run: Path
) -> None:
    texts = [*_all_captions(), *UNSEEN]
    traced = torch.jit.load(str(sentence_bundle / "text.pt"))
    ids, mask = eager.tokens.encode(texts)
    with torch.inference_mode():
        exported = traced(torch.from_numpy(np.stack([ids, mask], axis=1))).numpy()
    expected = eager.codes(texts)
    assert exported.dtype == np.uint8 and exported.shape == (len(texts), 2)
    assert np.array_equal(exported, expected)
    # The codes the model was trained and evaluated on (cached, length-bucketed embeddings).
    config = eager.config.text
    cached = extract_sentence_features(
        _all_captions(),
        encoder="minilm",
        max_length=config.max_length,
        cache_dir=Path(config.cache_dir),
    )
    assert np.array_equal(eager.codes_of_embeddings(cached), exported[:24])
    # A trained model, not a constant: captions of one topic share more bits than others.
    bits = np.unpackbits(exported[:24], axis=1).astype(int)
    agree = (bits[:, None] == bits[None]).mean(-1)
    topic = np.repeat(np.arange(3), 8)
    same = topic[:, None] == topic[None]
    assert agree[same].mean() > agree[~same].mean() + 0.2


def test_service_in_a_process_without_model_gives_the_eager_codes(
    sentence_bundle: Path, eager: EagerText, tmp_path: Path
) -> None:
    texts = [*_all_captions()[::5], *UNSEEN[:3], UNSEEN[4], UNSEEN[5]]
    request = {"bundle": str(sentence_bundle), "texts": texts, "out": str(tmp_path / "codes.npz")}
    script = """
import json, sys
import numpy as np
from fastapi.testclient import TestClient
from bundle.sentence import SentenceTokenizer
from service.app import create_app
from service.encoders import load_bundle
from service.settings import Settings

req = json.loads(sys.argv[1])
bundle = load_bundle(req["bundle"])
assert isinstance(bundle.vectorizer, SentenceTokenizer)
batch, known = bundle.vectorizer.vectorize(req["texts"])
codes = bundle.encoders["text"].encode(batch)
settings = Settings(bundle_dir=req["bundle"], data_dir=req["out"] + ".data", batch_window_ms=1.0,
                    allowed_hosts="testserver")
with TestClient(create_app(settings)) as client:
    r = client.post("/v1/encode", json={"texts": req["texts"]})
    assert r.status_code == 200, r.text
    http = [bytes.fromhex(c["code"]) for c in r.json()["codes"]]
    http_known = [c["known_tokens"] for c in r.json()["codes"]]
np.savez(req["out"], batch=batch, codes=codes, known=np.array(known),
         http=np.frombuffer(b"".join(http), dtype=np.uint8).reshape(len(http), -1),
         http_known=np.array(http_known))
bad = sorted(m for m in sys.modules if m == "model" or m.startswith("model."))
assert not bad, f"the service imported model/: {bad}"
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHBRIDGE_")}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(request)],
        cwd=REPO,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    got = np.load(tmp_path / "codes.npz")
    ids, mask = eager.tokens.encode(texts)
    assert got["batch"].dtype == np.int64
    assert np.array_equal(got["batch"][:, 0], ids) and np.array_equal(got["batch"][:, 1], mask)
    expected = eager.codes(texts)
    assert np.array_equal(got["codes"], expected)
    assert np.array_equal(got["http"], expected)
    # Known word pieces: [CLS], [SEP] and [UNK] do not count; the long text is cut at 16 tokens.
    unknown = eager.tokens.tokenizer.token_to_id("[UNK]")
    pieces = [row[m == 1][1:-1] for row, m in zip(ids, mask, strict=True)]
    assert got["known"].tolist() == [int((p != unknown).sum()) for p in pieces]
    assert got["http_known"].tolist() == got["known"].tolist()
    assert got["known"][-2] == MAX_LENGTH - 2


def _bundle_view(source: Path, root: Path) -> Path:
    """Manifest and tokenizer copied, the 90 MB encoder linked: for refusal tests."""
    root.mkdir()
    for name in ("manifest.json", "tokenizer.json"):
        (root / name).write_bytes((source / name).read_bytes())
    (root / "text.pt").symlink_to(source / "text.pt")
    return root


def _edit_text_spec(root: Path, **changes: object) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["modalities"]["text"].update(changes)
    path.write_text(json.dumps(manifest))


def test_service_refuses_a_tampered_or_missing_tokenizer(
    sentence_bundle: Path, tmp_path: Path
) -> None:
    tampered = _bundle_view(sentence_bundle, tmp_path / "tampered")
    with (tampered / "tokenizer.json").open("a") as f:
        f.write(" ")
    with pytest.raises(BundleError, match=r"sha256 mismatch for tokenizer\.json"):
        load_bundle(tampered)
    missing = _bundle_view(sentence_bundle, tmp_path / "missing")
    (missing / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"missing tokenizer\.json"):
        load_bundle(missing)
    # A file that is not a tokenizer, listed with its true sha256.
    garbage = _bundle_view(sentence_bundle, tmp_path / "garbage")
    (garbage / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    manifest = json.loads((garbage / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"] = hashlib.sha256(b'{"not": "a tokenizer"}').hexdigest()
    (garbage / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"tokenizer\.json is not a loadable tokenizer\.json"):
        load_bundle(garbage)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_length": 0}, "max_length must be an integer >= 3, got 0"),
        ({"max_length": "16"}, "max_length must be an integer >= 3, got '16'"),
        ({"pad_id": -1}, "pad_id must be a non-negative integer, got -1"),
        ({"tokenizer": None}, "tokenizer must name the bundle's tokenizer file"),
        (
            {"input": "tokens"},
            "input is 'tokens'; expected 'bag_of_words' or 'sentence' or 'token_ids'",
        ),
    ],
)
def test_service_refuses_a_bad_sentence_spec(
    sentence_bundle: Path, tmp_path: Path, changes: dict, message: str
) -> None:
    root = _bundle_view(sentence_bundle, tmp_path / "bad")
    _edit_text_spec(root, **changes)
    with pytest.raises(BundleError, match=message):
        load_bundle(root)


def test_sentence_tokenizer_counts_known_pieces(sentence_bundle: Path) -> None:
    tokenizer = SentenceTokenizer(sentence_bundle / "tokenizer.json", 8, 0)
    batch, known = tokenizer.vectorize(["a dog", "", "🐈", "one two three four five six seven"])
    assert batch.shape == (4, 2, 8) and batch.dtype == np.int64
    assert known == [2, 0, 0, 6]  # the last is cut to [CLS] + 6 words + [SEP]
    assert batch[3, 1].tolist() == [1] * 8 and batch[1, 1].tolist() == [1, 1] + [0] * 6
