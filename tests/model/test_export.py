"""Export of a trained run to a bundle, and that bundle served end to end.

The session's tiny real model (tests/conftest.py: `tiny_run`, `tiny_bundle`), trained on
pictures of coloured shapes (labels: colour and shape; text: "a red circle"), exported with
`model.export`, is checked three ways: the TorchScript encoders against an eager model
rebuilt here from the checkpoint, the bundle loaded by `service.encoders` in a fresh process
that never imports `model/`, and a real server started with `hashbridge serve` on loopback.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from bundle.text import Vocabulary
from hashbridge.cli import main as cli_main
from index.codes import pack_signs
from model.backbones.efficientnet import load_pretrained
from model.build import build_method
from model.checkpoint import load_checkpoint
from model.config import config_from_dict
from model.data.images import load_image
from model.export import ExportError, ModalityExport, build_encoders, export_bundle, load_run
from model.features import extract_image_features
from model.hashing import PixelNormalize, pack_bits
from model.train import train
from service.encoders import load_bundle
from service.errors import BundleError
from tests.support.service_bundle import AUTH, REPO, ServerProcess
from tests.support.shapes import COLOURS, PER_COMBINATION, SHAPES, Shapes, one_thread

SHARED = REPO.parent / "shared" / "datasets"
MIRFLICKR = SHARED / "mirflickr25k"
WIKIPEDIA = SHARED / "wikipedia"


# ---------------------------------------------------------------- data and the tiny model


@pytest.fixture(scope="session")
def run_dir(tiny_run: Path) -> Path:
    """The session's tiny run on the shapes (tests/conftest.py), trained once for all tests."""
    return tiny_run


@pytest.fixture(scope="session")
def bundle_dir(tiny_bundle: Path) -> Path:
    """The tiny run exported once for the session (tests/conftest.py)."""
    return tiny_bundle


class EagerModel:
    """The trained model rebuilt from the checkpoint, independently of model/export.py."""

    def __init__(self, run_dir: Path) -> None:
        state = load_checkpoint(run_dir)
        self.config = config_from_dict(state["config"])
        self.vocabulary = Vocabulary.from_json(state["vocabulary"])
        self.method = build_method(
            self.config,
            state["input_dims"],
            state["kinds"],
            len(state["label_names"]),
            state["multi_label"],
        )
        self.method.load_state_dict(state["model"])
        self.method.eval()
        self.trunk = load_pretrained(self.config.image.backbone)
        self.normalize = PixelNormalize(self.trunk.spec.mean, self.trunk.spec.std)

    @torch.inference_mode()
    def image_features(self, pixels: np.ndarray) -> torch.Tensor:
        x = self.normalize(torch.from_numpy(pixels)).contiguous(memory_format=torch.channels_last)
        return self.trunk(x)

    @torch.inference_mode()
    def codes(self, modality: str, x: torch.Tensor) -> np.ndarray:
        return pack_bits(self.method.stream(modality)(x)).numpy()

    def image_codes(self, pixels: np.ndarray) -> np.ndarray:
        return self.codes("image", self.image_features(pixels))

    def text_codes(self, texts: list[str]) -> np.ndarray:
        return self.codes("text", torch.from_numpy(self.vocabulary.encode(texts)))


@pytest.fixture(scope="session")
def eager(run_dir: Path) -> EagerModel:
    return EagerModel(run_dir)


@pytest.fixture(scope="session")
def pixels(shapes: Shapes) -> np.ndarray:
    """The shapes as the model side prepares them, uint8 (60, 3, 64, 64)."""
    return np.stack([load_image(p, 64) for p in shapes.images])


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HASHBRIDGE_")}


def _no_model_modules() -> str:
    return "bad = sorted(m for m in sys.modules if m == 'model' or m.startswith('model.'))"


# ---------------------------------------------------------------- the bundle itself


def test_manifest_follows_the_contract(bundle_dir: Path, run_dir: Path) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    state = load_checkpoint(run_dir)
    assert manifest["format_version"] == 1
    assert manifest["method"] == "dsmhn"
    assert manifest["bits"] == 16
    assert manifest["label_names"] == sorted([*COLOURS, *SHAPES])
    image, text = manifest["modalities"]["image"], manifest["modalities"]["text"]
    assert image["input"] == "pixels" and image["size"] == 64
    assert image["backbone"] == "efficientnet-lite0"
    assert image["mean"] == [0.5, 0.5, 0.5] and image["std"] == [0.5, 0.5, 0.5]
    assert text["input"] == "bag_of_words"
    assert text["vocabulary"] == state["vocabulary"]
    assert sorted(manifest["files"]) == ["image.pt", "text.pt"]
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((bundle_dir / name).read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["image.pt", "manifest.json", "text.pt"]
    assert manifest["source"]["epoch"] == 60
    assert manifest["hashbridge_version"] == "0.1.0"
    # Export leaves no temporary folder beside the bundle.
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["bundle"]


def test_scripted_encoders_match_the_eager_model(
    bundle_dir: Path, eager: EagerModel, pixels: np.ndarray, shapes: Shapes
) -> None:
    image = torch.jit.load(str(bundle_dir / "image.pt"))
    text = torch.jit.load(str(bundle_dir / "text.pt"))
    noise = np.random.default_rng(7).integers(0, 256, size=(5, 3, 64, 64), dtype=np.uint8)
    captions = [*shapes.captions, "a purple hexagon", "RED   Circle!"]
    with torch.inference_mode():
        for batch in (pixels, pixels[:1], noise):
            assert np.array_equal(image(torch.from_numpy(batch)).numpy(), eager.image_codes(batch))
        bags = torch.from_numpy(eager.vocabulary.encode(captions))
        assert np.array_equal(text(bags).numpy(), eager.text_codes(captions))
    codes = eager.image_codes(pixels)
    assert codes.dtype == np.uint8 and codes.shape == (60, 2)
    # Different pictures really get different codes (not a constant encoder).
    assert len({c.tobytes() for c in codes}) >= 8


def test_scripted_encoders_give_the_real_values_behind_their_codes(
    bundle_dir: Path, eager: EagerModel, pixels: np.ndarray, shapes: Shapes
) -> None:
    bags = torch.from_numpy(eager.vocabulary.encode([*shapes.captions, "a purple hexagon"]))
    for name, batch in (("image", torch.from_numpy(pixels)), ("text", bags)):
        scripted = torch.jit.load(str(bundle_dir / f"{name}.pt"))
        with torch.inference_mode():
            codes, values = scripted.codes_and_values(batch)
            assert torch.equal(codes, scripted(batch))  # the bits are forward's, unchanged
        assert values.dtype == torch.float32 and values.shape == (len(batch), 16)
        assert torch.equal(pack_bits(values), codes)
        # Real values, not signs: what the service re-ranks inside Hamming ties by.
        assert 0 < float(values.abs().min()) < 1 and float(values.abs().max()) <= 1
        assert len(torch.unique(values.abs())) > len(batch)


def test_pack_bits_is_msb_first_like_the_index() -> None:
    codes = torch.randn(9, 64, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(pack_bits(codes).numpy(), pack_signs(codes.numpy()))
    # The encoders' sign counts 0 as +1 (the index's pack_signs would give 0 there).
    assert pack_bits(torch.tensor([[0.0, -1, 2, -3, 0, -1, -1, -1]])).tolist() == [[0b10101000]]


def test_scripted_encoders_hold_no_device_constants(bundle_dir: Path) -> None:
    # A device recorded at trace time would break torch.jit.load(..., map_location="cuda").
    for name in ("image.pt", "text.pt"):
        graph = str(torch.jit.load(str(bundle_dir / name)).inlined_graph)
        assert "Device = prim::Constant" not in graph, name


def test_image_encoder_reproduces_the_training_features(
    bundle_dir: Path, eager: EagerModel, pixels: np.ndarray, shapes: Shapes
) -> None:
    """Codes from export's pixel path equal codes from the features the model was trained on."""
    config = eager.config.image
    cached = extract_image_features(
        shapes.images, backbone=config.backbone, size=config.size, cache_dir=Path(config.cache_dir)
    )
    trained = eager.codes("image", torch.from_numpy(cached))
    scripted = torch.jit.load(str(bundle_dir / "image.pt"))
    with torch.inference_mode():
        exported = scripted(torch.from_numpy(pixels)).numpy()
    assert np.array_equal(exported, trained)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_flip_averaged_image_encoder_matches_the_feature_cache(
    run_dir: Path, shapes: Shapes, pixels: np.ndarray, eager: EagerModel, tmp_path: Path
) -> None:
    """With image.flip_features the encoder averages the mirror in, as model/features.py does."""
    run = load_run(run_dir)
    run.config.image.flip_features = True
    item = build_encoders(run)["image"]
    assert item.kind.flip_features is True
    config = run.config.image
    some = slice(0, 60, 4)
    with one_thread():
        flipped = extract_image_features(
            shapes.images[some],
            backbone=config.backbone,
            size=config.size,
            cache_dir=tmp_path,
            flip=True,
        )
        batch = torch.from_numpy(pixels[some])
        with torch.inference_mode():
            expected = pack_bits(run.method.stream("image")(torch.from_numpy(flipped))).numpy()
            exported = item.encoder(batch).numpy()
            traced = torch.jit.trace(item.encoder, batch[:2], check_trace=False)
            assert np.array_equal(traced(batch).numpy(), exported)
        assert np.array_equal(exported, expected)
        # The flip really changes the codes (else this test would prove nothing).
        assert not np.array_equal(exported, eager.image_codes(pixels[some]))


def test_bundle_loads_in_a_process_without_model(
    bundle_dir: Path, shapes: Shapes, eager: EagerModel, pixels: np.ndarray, tmp_path: Path
) -> None:
    request = {
        "bundle": str(bundle_dir),
        "images": [str(p) for p in shapes.images],
        "texts": [*shapes.captions, "a purple hexagon"],
        "out": str(tmp_path / "codes.npz"),
    }
    script = f"""
import json, sys
from pathlib import Path
import numpy as np
from service.encoders import load_bundle
from service.media import Upload, decode_image

req = json.loads(sys.argv[1])
bundle = load_bundle(req["bundle"])
image = bundle.inputs["image"]
pixels = np.stack([
    decode_image(Upload(Path(p).name, "image/png", Path(p).read_bytes()), image, 10**8)
    for p in req["images"]
])
bags, known = bundle.vectorizer.vectorize(req["texts"])
np.savez(
    req["out"],
    pixels=pixels,
    image=bundle.encoders["image"].encode(pixels),
    text=bundle.encoders["text"].encode(bags),
    known=np.array(known),
)
{_no_model_modules()}
assert not bad, f"the service imported model/: {{bad}}"
print(bundle.method, bundle.bits, bundle.modalities)
"""
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(request)],
        cwd=REPO,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "dsmhn 16 ['image', 'text']"
    got = np.load(tmp_path / "codes.npz")
    assert np.array_equal(got["pixels"], pixels)  # service preprocessing == model preprocessing
    assert np.array_equal(got["image"], eager.image_codes(pixels))
    assert np.array_equal(got["text"], eager.text_codes(request["texts"]))
    assert got["known"].tolist() == [3] * len(shapes.captions) + [1]  # only "a" is known


@pytest.fixture
def copy_of_bundle(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def _edit_manifest(root: Path, **changes: Any) -> None:
    path = root / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_service_refuses_a_tampered_encoder(copy_of_bundle: Path) -> None:
    with (copy_of_bundle / "text.pt").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"sha256 mismatch for text\.pt"):
        load_bundle(copy_of_bundle)


def test_service_refuses_a_missing_encoder(copy_of_bundle: Path) -> None:
    (copy_of_bundle / "image.pt").unlink()
    with pytest.raises(BundleError, match=r"missing image\.pt"):
        load_bundle(copy_of_bundle)


def test_service_refuses_an_unknown_format_version(copy_of_bundle: Path) -> None:
    _edit_manifest(copy_of_bundle, format_version=2)
    with pytest.raises(BundleError, match="format_version 2; this service reads format_version 1"):
        load_bundle(copy_of_bundle)


@pytest.mark.parametrize(
    ("modality", "key", "value"),
    [("image", "size", 48), ("image", "mean", [0.0, 0.0, 0.0]), ("text", "dim", None)],
)
def test_service_refuses_a_manifest_entry_edited_after_export(
    copy_of_bundle: Path, modality: str, key: str, value: Any
) -> None:
    # A size of 48 for an encoder traced at 32 loaded and encoded: codes that match nothing.
    manifest = json.loads((copy_of_bundle / "manifest.json").read_text())
    entry = manifest["modalities"][modality]
    if value is None:  # the vocabulary, one word renamed: same width, other meaning
        entry["vocabulary"]["tokens"][0] += "x"
    else:
        entry[key] = value
    (copy_of_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"entry for {modality}\.pt is not the one it was"):
        load_bundle(copy_of_bundle)


def test_a_manifest_edit_outside_the_entries_still_loads(copy_of_bundle: Path) -> None:
    _edit_manifest(copy_of_bundle, created_at="yesterday")
    manifest = json.loads((copy_of_bundle / "manifest.json").read_text())
    manifest["modalities"] = dict(reversed(manifest["modalities"].items()))
    (copy_of_bundle / "manifest.json").write_text(json.dumps(manifest, indent=4))
    assert load_bundle(copy_of_bundle).modalities == ["image", "text"]


# ---------------------------------------------------------------- export's own refusals


def test_export_refuses_a_diverged_run(run_dir: Path, tmp_path: Path) -> None:
    # Its encoders gave every input one code, and passed the bit-identical check.
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(ExportError, match="hold nan or infinite values"):
        export_bundle(run, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_export_refuses_codes_that_differ_from_eager(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trace that baked in the example's batch size is caught and nothing is written."""
    import model.export as export

    class BatchDependent(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            codes = self.inner(x)
            # Python control flow on a shape: traced once with 2 items, wrong for others.
            return codes if x.shape[0] == 2 else 255 - codes

    real = export.build_encoders

    def sabotaged(run: export.RunState) -> dict[str, ModalityExport]:
        text = real(run)["text"]  # the image encoder is left out: tracing it is slow
        text.encoder = BatchDependent(text.encoder)
        return {"text": text}

    monkeypatch.setattr(export, "build_encoders", sabotaged)
    out = tmp_path / "exports" / "bundle"
    with one_thread(), pytest.raises(ExportError, match="text encoder: TorchScript codes differ"):
        export_bundle(run_dir, out)
    assert list((tmp_path / "exports").iterdir()) == []  # no bundle, no temp folder


def test_export_refuses_to_overwrite_unless_forced(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        export_bundle(run_dir, out)
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out)]) == 2
    assert "already exists and is not empty; choose another folder or overwrite it" in (
        capsys.readouterr().err
    )
    assert (out / "notes.txt").read_text() == "keep me"
    # --force replaces a bundle, never a folder of something else, least of all the run.
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out), "--force"]) == 2
    assert "is not a bundle (it has no manifest.json)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
    checkpoint = sorted(p.name for p in run_dir.iterdir())
    assert cli_main(["export", "--run", str(run_dir), "--out", str(run_dir), "--force"]) == 2
    assert f"{run_dir} holds the run" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == checkpoint

    (out / "notes.txt").unlink()
    with one_thread():
        export_bundle(run_dir, out)
        (out / "text.pt").write_bytes(b"stale")
        assert cli_main(["export", "--run", str(run_dir), "--out", str(out), "--force"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"bundle": str(out), "bits": 16, "modalities": ["image", "text"]}
    assert sorted(p.name for p in out.iterdir()) == ["image.pt", "manifest.json", "text.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # old copy and temp gone
    assert load_bundle(out).bits == 16


def test_export_force_replaces_a_link_to_a_bundle(
    run_dir: Path, bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A deployment's "current" link to an earlier bundle: the link is replaced by the new
    # bundle and what it pointed at is left alone (rmtree refused the link: exit 2 after the
    # bundle was in place, and a stray .current-old-PID link behind).
    earlier = tmp_path / "v1"
    shutil.copytree(bundle_dir, earlier)
    (tmp_path / "current").symlink_to(earlier, target_is_directory=True)
    with one_thread():
        code = cli_main(
            ["export", "--run", str(run_dir), "--out", str(tmp_path / "current"), "--force"]
        )
    assert code == 0, capsys.readouterr().err
    current = tmp_path / "current"
    assert current.is_dir() and not current.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1"]
    assert sorted(p.name for p in earlier.iterdir()) == ["image.pt", "manifest.json", "text.pt"]
    assert load_bundle(current).fingerprint == load_bundle(earlier).fingerprint


def test_export_under_a_file_says_so_before_any_work(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was "[Errno 17] File exists: '...notes.txt'", after every encoder had been traced.
    (tmp_path / "notes.txt").write_text("keep me")
    out = tmp_path / "notes.txt" / "bundle"
    assert cli_main(["export", "--run", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"hashbridge export: error: the folder of --out {out.parent} cannot be a folder: "
        f"{tmp_path / 'notes.txt'} is a file"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_cli_export_of_a_missing_run_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-run"
    code = cli_main(["export", "--run", str(missing), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        f"hashbridge export: error: run directory {missing} does not exist; "
        "train one with: hashbridge train --out DIR"
    )
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(not WIKIPEDIA.is_dir(), reason=f"no Wikipedia dataset at {WIKIPEDIA}")
def test_feature_vector_runs_export_but_the_service_refuses_them(tmp_path: Path) -> None:
    """Wikipedia ships SIFT/LDA vectors: the encoders export, the service says why it can't."""
    config = config_from_dict(
        {
            "bits": 16,
            "data": {"kind": "wikipedia", "path": str(WIKIPEDIA)},
            "features": {"hidden": [32]},
            "train": {"epochs": 2, "eval_every": 0},
        }
    )
    with one_thread():
        train(config, tmp_path / "run")
        bundle = export_bundle(tmp_path / "run", tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    specs = manifest["modalities"]
    vectors = {"input": "features", "dtype": "float32"}
    assert specs["image"] == {"file": "image.pt", "dim": 128, **vectors}
    assert specs["text"] == {"file": "text.pt", "dim": 10, **vectors}
    assert manifest["verified_samples"] == {"image": 16, "text": 16}
    with pytest.raises(BundleError, match="takes precomputed feature vectors"):
        load_bundle(bundle)


# ---------------------------------------------------------------- serve


def _serve_in_fresh_process(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    script = f"""
import sys
from hashbridge.cli import main
code = main(sys.argv[1:])
{_no_model_modules()}
assert not bad, f"hashbridge serve imported model/: {{bad}}"
sys.exit(code)
"""
    return subprocess.run(
        [sys.executable, "-c", script, "serve", *args],
        cwd=REPO,
        env={**_clean_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_with_a_bad_bundle_exits_2_without_importing_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = _serve_in_fresh_process(
        ["--bundle", str(tmp_path / "empty"), "--data", str(tmp_path / "data")]
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"hashbridge serve: error: cannot load the bundle: bundle {tmp_path / 'empty'} has no "
        "manifest.json; point bundle_dir at an export folder"
    )
    assert "Traceback" not in done.stderr


def test_serve_without_a_bundle_names_the_flag_and_env_var(tmp_path: Path) -> None:
    done = _serve_in_fresh_process([], HASHBRIDGE_DATA_DIR=str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "hashbridge serve: error: invalid settings: bundle_dir: Field required "
        "(set --bundle or HASHBRIDGE_BUNDLE_DIR)"
    )


@dataclass
class Served:
    url: str
    image_ids: dict[str, int]  # client id -> item id
    text_ids: dict[str, int]


def _ingest(
    client: httpx.Client, files: list[Path], captions: list[str], prefix: str = ""
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Images through multipart (with client_ids), then their captions through JSON."""
    parts = [("files", (p.name, p.read_bytes(), "image/png")) for p in files]
    ids = [f"{prefix}img-{i}" for i in range(len(files))]
    r = client.post(
        "/v1/items", files=parts, data={"client_ids": json.dumps(ids)}, headers=AUTH, timeout=120
    )
    assert r.status_code == 200, r.text
    images = r.json()["items"]
    items = [{"text": t, "client_id": f"{prefix}txt-{i}"} for i, t in enumerate(captions)]
    r = client.post("/v1/items", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    return images, r.json()["items"]


def _search_image(client: httpx.Client, path: Path, k: int) -> list[dict[str, Any]]:
    r = client.post(
        "/v1/search",
        files={"file": (path.name, path.read_bytes(), "image/png")},
        data={"k": str(k), "modalities": "text"},
    )
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def _search_text(client: httpx.Client, text: str, k: int) -> list[dict[str, Any]]:
    r = client.post("/v1/search", json={"text": text, "k": k, "modalities": ["image"]})
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


@pytest.fixture
def server(bundle_dir: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """`hashbridge serve` on a free loopback port with an empty data dir."""
    command = [sys.executable, "-m", "hashbridge.cli", "serve"]
    with ServerProcess(
        bundle_dir, tmp_path / "data", tmp_path / "server.log", command=command
    ) as proc:
        proc.wait_ready()
        yield proc
        # uvicorn re-raises SIGTERM after a graceful shutdown: -SIGTERM is a clean exit too.
        assert proc.stop() in (0, -signal.SIGTERM), proc.output()
        assert "Application shutdown complete" in proc.output()


@pytest.mark.e2e
def test_end_to_end_shapes(
    server: ServerProcess, shapes: Shapes, eager: EagerModel, pixels: np.ndarray
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        stats = client.get("/v1/stats").json()
        assert (stats["bits"], stats["method"]) == (16, "dsmhn")
        assert stats["label_names"] == sorted([*COLOURS, *SHAPES])
        images, texts = _ingest(client, shapes.images, shapes.captions)
        # The server's codes are the trained model's codes, item for item.
        expected_images = [c.tobytes().hex() for c in eager.image_codes(pixels)]
        assert [i["code"] for i in images] == expected_images
        expected_texts = [c.tobytes().hex() for c in eager.text_codes(shapes.captions)]
        assert [t["code"] for t in texts] == expected_texts
        assert client.get("/v1/stats").json()["by_modality"] == {"image": 60, "text": 60}

        caption_of = {f"txt-{i}": c for i, c in enumerate(shapes.captions)}
        ranks = []
        for i, path in enumerate(shapes.images):
            hits = _search_image(client, path, k=60)
            assert sorted(h["client_id"] for h in hits) == sorted(caption_of)
            # The five copies of a caption share one code, hence one distance.
            by_caption = {(caption_of[h["client_id"]], h["distance"]) for h in hits}
            assert len(by_caption) == len(COLOURS) * len(SHAPES)
            ranks.append(_tie_rank(dict(by_caption), shapes.captions[i]))
        # Among 12 distinct captions chance would put the picture's own at rank 5.5.
        ranks_arr = np.asarray(ranks)
        assert ranks_arr.max() < 3, ranks_arr
        assert (ranks_arr == 0).mean() >= 0.7, ranks_arr

        precision = []
        for i in range(0, 60, PER_COMBINATION):
            hits = _search_text(client, shapes.captions[i], k=60)
            assert sorted(h["client_id"] for h in hits) == sorted(f"img-{j}" for j in range(60))
            relevant = {f"img-{j}" for j in range(60) if shapes.labels[j] == shapes.labels[i]}
            distance = {h["client_id"]: h["distance"] for h in hits}
            precision.append(_precision_at(distance, relevant, 5))
        # Chance is 5/60 per caption.
        assert min(precision) > 0, precision
        assert float(np.mean(precision)) >= 0.75, precision


def _tie_rank(distance: dict[str, int], target: str) -> float:
    """How many others are nearer than `target`, counting those tied with it as half."""
    own = distance[target]
    closer = sum(d < own for d in distance.values())
    ties = sum(d == own for d in distance.values()) - 1
    return closer + ties / 2


def _precision_at(distance: dict[str, int], relevant: set[str], k: int) -> float:
    """Precision at k, averaged over every order of the items tied at the k-th distance."""
    kth = sorted(distance.values())[k - 1]
    nearer = [c for c, d in distance.items() if d < kth]
    tied = [c for c, d in distance.items() if d == kth]
    hits = sum(c in relevant for c in nearer)
    hits_tied = (k - len(nearer)) * sum(c in relevant for c in tied) / len(tied)
    return (hits + hits_tied) / k


# ---------------------------------------------------------------- MIRFlickr, when present


@pytest.fixture(scope="session")
def mirflickr_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    """A tiny model on 400 real MIRFlickr pairs; returns its bundle and 100 held-out pairs."""
    if not (MIRFLICKR / "manifest.csv").is_file():
        pytest.skip(f"no MIRFlickr-25K copy at {MIRFLICKR} (see /work/shared/datasets/README.md)")
    work = tmp_path_factory.mktemp("mirflickr")
    with (MIRFLICKR / "manifest.csv").open(newline="") as f:
        pairs = [r for r in csv.DictReader(f) if r["image"]][:500]
    rows = [
        {
            "id": r["image_id"],
            "image": str(MIRFLICKR / r["image"]),
            "text": r["tags"],
            "labels": r["labels"],
            "split": "train" if i < 400 else "query",
        }
        for i, r in enumerate(pairs)
    ]
    manifest = work / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = config_from_dict(
        {
            "bits": 32,
            "data": {"kind": "manifest", "path": str(manifest)},
            "image": {"size": 128, "cache_dir": str(work / "cache"), "hidden": [128]},
            "text": {"hidden": [128]},
            # 13 steps an epoch: fewer epochs collapse the tag codes onto a handful of values.
            "train": {"epochs": 20, "batch_size": 32, "lr": 3e-3, "eval_every": 0},
        }
    )
    with one_thread():
        train(config, work / "run")
        return export_bundle(work / "run", work / "bundle"), rows[400:]


@pytest.mark.e2e
def test_end_to_end_mirflickr(
    mirflickr_bundle: tuple[Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    """Held-out photos find their own tags in the better half of 100 tag lists."""
    bundle, held_out = mirflickr_bundle
    files = [Path(r["image"]) for r in held_out]
    tags = [r["text"] for r in held_out]
    command = [sys.executable, "-m", "hashbridge.cli", "serve"]
    # One torch thread: codes are not compared across processes here, and on two shared
    # cores it is faster.
    env = {"OMP_NUM_THREADS": "1"}
    with ServerProcess(bundle, tmp_path / "data", tmp_path / "log", command=command, **env) as proc:
        proc.wait_ready()
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            _ingest(client, files, tags)
            ranks = []
            for i in range(0, len(files), 2):
                hits = _search_image(client, files[i], k=len(tags))
                distance = {h["client_id"]: h["distance"] for h in hits}
                ranks.append(_tie_rank(distance, f"txt-{i}") / (len(tags) - 1))
        assert proc.stop() in (0, -signal.SIGTERM), proc.output()
    ranks_arr = np.asarray(ranks)
    # Chance is 0.5 for each; the trained model puts most own tag lists in the better half.
    assert float(np.median(ranks_arr)) < 0.4, ranks_arr.round(2)
    assert float((ranks_arr < 0.5).mean()) >= 0.6, ranks_arr.round(2)
    assert float(ranks_arr.mean()) < 0.45, ranks_arr.round(2)
