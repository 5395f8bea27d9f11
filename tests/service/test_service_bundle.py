"""Bundle loading: verification, refusals with clear messages, text vectors, data-dir pairing."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.encoders import trace
from bundle.inputs import BagOfWords
from bundle.text import Vocabulary
from bundle.writer import BundleWriter
from service.encoders import load_bundle
from service.errors import BundleError
from tests.support.service_bundle import (
    VOCAB,
    TextHasher,
    build_bundle,
    edit_manifest,
    make_settings,
    open_client,
)


@pytest.fixture
def fresh(svc_bundle_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session bundle to break."""
    return Path(shutil.copytree(svc_bundle_dir, tmp_path / "bundle"))


def test_loads_a_valid_bundle(svc_bundle_dir: Path) -> None:
    b = load_bundle(svc_bundle_dir)
    assert (b.bits, b.method, b.modalities) == (32, "dsmhn", ["image", "text"])
    assert b.label_names == ["animal", "nature", "urban"]
    assert b.inputs["image"].size == 32
    assert b.vectorizer is not None and list(b.vectorizer.tokens) == VOCAB
    codes = b.encoders["image"].encode(np.zeros((3, 3, 32, 32), np.uint8))
    assert codes.dtype == np.uint8 and codes.shape == (3, 4)


def test_fingerprint_follows_the_weights(tmp_path: Path, svc_bundle_dir: Path) -> None:
    same = build_bundle(tmp_path / "same")
    other = build_bundle(tmp_path / "other", seed=1)
    assert load_bundle(same).fingerprint == load_bundle(svc_bundle_dir).fingerprint
    assert load_bundle(other).fingerprint != load_bundle(svc_bundle_dir).fingerprint


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_encoders_without_a_gpu_are_refused_at_start_up(svc_bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="HASHBRIDGE_ENCODER_DEVICE=cpu"):
        load_bundle(svc_bundle_dir, "cuda")
    with pytest.raises(BundleError, match="'cpu' or 'cuda'"):
        load_bundle(svc_bundle_dir, "tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_encoders_keep_the_fingerprint_and_the_codes(svc_bundle_dir: Path) -> None:
    cpu, gpu = load_bundle(svc_bundle_dir), load_bundle(svc_bundle_dir, "cuda")
    assert gpu.fingerprint == cpu.fingerprint
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(16, 3, 32, 32), dtype=np.uint8)
    bags = (rng.random((16, len(VOCAB))) < 0.3).astype(np.float32)
    for modality, batch in (("image", pixels), ("text", bags)):
        np.testing.assert_array_equal(
            gpu.encoders[modality].encode(batch), cpu.encoders[modality].encode(batch)
        )


def _drop_file(root: Path) -> None:
    (root / "text.pt").unlink()


def _corrupt_file(root: Path) -> None:
    with (root / "image.pt").open("ab") as f:
        f.write(b"\0")


def _drop_hash(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["files"]["text.pt"]
    (root / "manifest.json").write_text(json.dumps(manifest))


def _bad_mode(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["modalities"]["text"]["vocabulary"]["mode"] = "bpe"
    (root / "manifest.json").write_text(json.dumps(manifest))


def _unknown_modality(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["modalities"]["audio"] = {"file": "text.pt", "input": "wave"}
    (root / "manifest.json").write_text(json.dumps(manifest))


def _feature_input(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["modalities"]["image"] = {"file": "image.pt", "input": "features", "dim": 128}
    (root / "manifest.json").write_text(json.dumps(manifest))


def _short_vocabulary(root: Path, dim: int) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    text = manifest["modalities"]["text"]
    text["vocabulary"]["tokens"] = text["vocabulary"]["tokens"][:-3]
    text["dim"] = dim
    (root / "manifest.json").write_text(json.dumps(manifest))


def _renamed_word(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["modalities"]["text"]["vocabulary"]["tokens"][0] += "x"
    (root / "manifest.json").write_text(json.dumps(manifest))


def _image_size(root: Path, size: int) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["modalities"]["image"]["size"] = size
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: (r / "manifest.json").unlink(), "has no manifest.json"),
        (lambda r: (r / "manifest.json").write_text("{not json"), "not readable JSON"),
        (_drop_file, "missing text.pt"),
        (_corrupt_file, "sha256 mismatch for image.pt"),
        (_drop_hash, "lists no sha256 for text.pt"),
        (lambda r: edit_manifest(r, format_version=2), "format_version 2"),
        (lambda r: edit_manifest(r, bits=30), "multiple of 8"),
        (lambda r: edit_manifest(r, bits=64), "64-bit codes"),
        (lambda r: edit_manifest(r, modalities={}), "non-empty"),
        (_bad_mode, "mode is 'bpe'"),
        (_unknown_modality, "modalities.audio: unknown modality"),
        (_feature_input, "modalities.image takes precomputed feature vectors"),
        (lambda r: edit_manifest(r, label_names=5), "label_names must be a list of strings"),
        (lambda r: _short_vocabulary(r, 40), "lists 37 tokens but the text encoder takes 40"),
        # A typo: its probes alone were a MemoryError traceback.
        (lambda r: _image_size(r, 100_000), "take 28,610 MiB per item; .* at most 256 MiB"),
        # A word renamed by hand: same width, but not the entry the encoder was traced with.
        (_renamed_word, "entry for text.pt is not the one it was"),
    ],
    ids=[
        "no-manifest",
        "bad-json",
        "missing-file",
        "wrong-hash",
        "no-hash",
        "version",
        "bits-not-multiple-of-8",
        "width-mismatch",
        "no-modalities",
        "bad-vocab-mode",
        "unknown-modality",
        "feature-vectors",
        "label-names-not-a-list",
        "vocabulary-shorter-than-dim",
        "huge-image-size",
        "vocabulary-edited",
    ],
)
def test_refuses_broken_bundles(fresh: Path, breakage, message: str) -> None:
    breakage(fresh)
    with pytest.raises(BundleError, match=message):
        load_bundle(fresh)


def test_refuses_an_encoder_that_takes_another_input_width(tmp_path: Path) -> None:
    # A consistent manifest over an encoder built for a longer vocabulary: only the start-up
    # probe finds it, and its message is one line, not TorchScript's stack.
    vocabulary = Vocabulary(VOCAB)
    with BundleWriter(tmp_path / "b") as writer:
        module = TextHasher(32, len(VOCAB) + 3).eval()
        writer.add("text", trace(module, torch.zeros(2, len(VOCAB) + 3)), BagOfWords(vocabulary))
        writer.finish(32, method="dsmhn", label_names=[])
    with pytest.raises(BundleError, match=r"probe text input of shape \(4, 40\): [^\n]*$"):
        load_bundle(tmp_path / "b")


def test_a_training_run_given_as_the_bundle_says_to_export_it(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(BundleError, match=r"is a training run, not a bundle: export it first"):
        load_bundle(tmp_path / "run")


def test_refuses_encoder_whose_width_disagrees(tmp_path: Path) -> None:
    root = build_bundle(tmp_path / "b", bits=32, encoder_bits=16)
    with pytest.raises(
        BundleError, match=r"image\.pt: image encoder returned .*\(4, 2\).*\(4, 4\)"
    ):
        load_bundle(root)


def test_startup_fails_with_the_bundle_message(fresh: Path, tmp_path: Path) -> None:
    _corrupt_file(fresh)
    with pytest.raises(BundleError, match="sha256 mismatch for image.pt"):
        with open_client(make_settings(fresh, tmp_path / "data")):
            pass


def test_data_dir_refuses_another_models_codes(
    svc_bundle_dir: Path,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with open_client(make_settings(svc_bundle_dir, data)) as c:
        assert c.get("/readyz").status_code == 200
    other = build_bundle(tmp_path / "other", seed=7)
    with pytest.raises(BundleError, match="codes from another bundle"):
        with open_client(make_settings(other, data)):
            pass
    wider = build_bundle(tmp_path / "wider", bits=64)
    with pytest.raises(BundleError, match="64"):
        with open_client(make_settings(wider, data)):
            pass
    # The original bundle still opens its own data dir.
    with open_client(make_settings(svc_bundle_dir, data)) as c:
        assert c.get("/readyz").status_code == 200


def test_text_vectorizer_word_mode() -> None:
    v = Vocabulary(["cat", "dog", "red"], mode="word")
    bags, known = v.vectorize(["A RED cat, a red_dog!", "nothing here", "dog-cat"])
    assert v.tokenize("A RED cat, a red_dog!") == ["a", "red", "cat", "a", "red", "dog"]
    np.testing.assert_array_equal(bags, [[1, 1, 1], [0, 0, 0], [1, 1, 0]])
    assert bags.dtype == np.float32
    # Known tokens count occurrences that hit the vocabulary, repeats included.
    assert known == [4, 0, 2]


def test_text_vectorizer_char_mode() -> None:
    v = Vocabulary(["猫が", "が好", "ab"], mode="char", ngram=2)
    assert v.tokenize("猫が 好き") == ["猫が", "が好", "好き"]
    bags, known = v.vectorize(["猫が好き", "x", "A-b"])
    np.testing.assert_array_equal(bags, [[1, 1, 0], [0, 0, 0], [0, 0, 1]])
    assert known == [2, 0, 1]


def test_video_bundle_loads_and_checks_its_encoder(svc_video_bundle_dir: Path) -> None:
    b = load_bundle(svc_video_bundle_dir)
    assert b.modalities == ["image", "text", "video"]
    codes = b.encoders["video"].encode(np.zeros((2, 1, 4, 3, 32, 32), np.uint8))
    assert codes.shape == (2, 4)
