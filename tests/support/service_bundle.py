"""Helpers for the service tests: real small bundles, test images, settings, a server process.

Bundles are built without model/'s trainer: each encoder is a tiny seeded torch module
(conv + linear, or linear) ending in sign-and-pack, traced and written through bundle/'s
writer, so they are in the current format (sha256 per file, each encoder carrying the
digest of its manifest entry).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageOps
from torch import nn

from bundle.encoders import trace
from bundle.inputs import BagOfWords, Clip, InputKind, Pixels
from bundle.text import Vocabulary
from bundle.writer import BundleWriter
from service.app import create_app
from service.encoders import Bundle
from service.settings import Settings

VOCAB = [
    "cat", "dog", "bird", "fish", "horse", "cow", "sheep", "tree", "flower", "grass",
    "sky", "sea", "river", "lake", "mountain", "snow", "beach", "city", "street", "car",
    "bus", "train", "boat", "plane", "house", "bridge", "night", "sunset", "red", "blue",
    "green", "yellow", "black", "white", "people", "child", "portrait", "food", "music", "art",
]  # fmt: skip


def _pack(bits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """MSB-first packing of (n, B) booleans into (n, B/8) uint8, like np.packbits."""
    grouped = bits.to(torch.int64).reshape(bits.shape[0], -1, 8)
    return (grouped * weights).sum(-1).to(torch.uint8)


class _Hasher(nn.Module):
    def __init__(self, bits: int) -> None:
        super().__init__()
        self.register_buffer("weights", 2 ** torch.arange(7, -1, -1, dtype=torch.int64))

    def packed(self, h: torch.Tensor) -> torch.Tensor:
        return _pack(h > 0, self.weights)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed(self.hidden(x))

    def codes_and_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The codes and real values behind them, as exported encoders give (re-ranking)."""
        h = self.hidden(x)
        return self.packed(h), torch.tanh(h)


class ImageHasher(_Hasher):
    """uint8 (n, 3, s, s) -> conv -> 4x4 pool -> linear -> packed codes."""

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(8 * 16, bits)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        z = x.to(torch.float32) / 127.5 - 1.0
        return self.fc(self.pool(self.conv(z)).flatten(1))


class TextHasher(_Hasher):
    """float32 bag of words (n, V) -> linear (no bias, so an empty text is all zeros)."""

    def __init__(self, bits: int, vocab: int) -> None:
        super().__init__(bits)
        self.fc = nn.Linear(vocab, bits, bias=False)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class VideoHasher(_Hasher):
    """uint8 (n, clips, T, 3, s, s) -> 2x2x2 pool of the first clip -> linear -> packed codes."""

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.pool = nn.AdaptiveAvgPool3d(2)
        self.fc = nn.Linear(3 * 8, bits)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, 0].transpose(1, 2).to(torch.float32) / 127.5 - 1.0
        return self.fc(self.pool(z).flatten(1))


def build_bundle(
    root: Path,
    *,
    bits: int = 32,
    image_size: int = 32,
    vocab: list[str] | None = None,
    mode: str = "word",
    ngram: int = 2,
    video: bool = False,
    frames: int = 4,
    seed: int = 0,
    encoder_bits: int | None = None,
    values: bool = False,
) -> Path:
    """Write a bundle folder through bundle/ and return it; ``encoder_bits`` makes encoders
    disagree with the manifest.

    ``values``: the encoders also trace ``codes_and_values`` (real values for re-ranking).
    """
    torch.manual_seed(seed)
    vocabulary = Vocabulary(list(vocab or VOCAB), mode=mode, ngram=ngram)
    width = encoder_bits or bits
    encoders: dict[str, tuple[nn.Module, InputKind]] = {
        "image": (ImageHasher(width), Pixels(image_size)),
        "text": (TextHasher(width, len(vocabulary)), BagOfWords(vocabulary)),
    }
    if video:
        encoders["video"] = (VideoHasher(width), Clip(frames=frames, size=image_size))
    with BundleWriter(root) as writer:
        for modality, (module, kind) in encoders.items():
            example = torch.from_numpy(kind.probe(2))
            module = module.eval()
            # Without values, only forward is traced: a bundle from before codes_and_values.
            traced = trace(module, example) if values else torch.jit.trace(module, example)
            writer.add(modality, traced, kind)
        writer.finish(bits, method="dsmhn", label_names=["animal", "nature", "urban"])
    return root


def edit_manifest(root: Path, **changes: object) -> None:
    """Overwrite top-level manifest keys (for refusal tests)."""
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def reference_pixels(image: Image.Image, size: int) -> np.ndarray:
    """The contract's preprocessing, written out independently of service.media."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def grid_image(seed: int, size: tuple[int, int] = (64, 48), cells: int = 4) -> Image.Image:
    """A picture of random coloured blocks: distinct seeds give clearly different codes."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(blocks, "RGB").resize(size, Image.Resampling.NEAREST)


def image_bytes(image: Image.Image, fmt: str = "PNG", **save_args: object) -> bytes:
    """Encode a Pillow image to bytes."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """PNG bytes of ``grid_image(seed)``."""
    return image_bytes(grid_image(seed, size))


API_KEY = "test-key-0123"
AUTH = {"X-API-Key": API_KEY}
PROBLEM = "application/problem+json"
REPO = Path(__file__).resolve().parents[2]


def make_settings(bundle_dir: Path, data_dir: Path, **overrides: Any) -> Settings:
    """Test settings: an API key, a short batch window, everything else overridable."""
    values: dict[str, Any] = {
        "bundle_dir": bundle_dir,
        "data_dir": data_dir,
        "api_key": API_KEY,
        "batch_window_ms": 1.0,
        "index_kind": "flat",
        # TestClient's requests name the host "testserver".
        "allowed_hosts": "testserver",
    }
    values.update(overrides)
    return Settings(**values)


def open_client(settings: Settings, bundle: Bundle | None = None) -> TestClient:
    """A TestClient whose context runs the app's lifespan."""
    return TestClient(create_app(settings, bundle=bundle))


def ingest_texts(client: Any, texts: list[str], **item_fields: Any) -> list[dict[str, Any]]:
    """Ingest texts through the JSON body and return the response items."""
    items = [{"text": t, **item_fields} for t in texts]
    r = client.post("/v1/items", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def ingest_files(client: Any, files: list[tuple[str, bytes]], **form: Any) -> list[dict[str, Any]]:
    """Ingest files through multipart and return the response items."""
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    r = client.post("/v1/items", files=parts, data=form, headers=AUTH)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def free_port() -> int:
    """A currently free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m service`` (or ``command``) in a fresh subprocess on a loopback port."""

    def __init__(
        self,
        bundle_dir: Path,
        data_dir: Path,
        log: Path,
        *,
        command: list[str] | None = None,
        port: int | None = None,
        **env: str,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environ = {k: v for k, v in os.environ.items() if not k.startswith("HASHBRIDGE_")}
        environ.update({"HASHBRIDGE_API_KEY": API_KEY, "HASHBRIDGE_BATCH_WINDOW_MS": "1"})
        environ.update(env)
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            [
                *(command or [sys.executable, "-m", "service"]),
                "--bundle",
                str(bundle_dir),
                "--data",
                str(data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=REPO,
            env=environ,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll /readyz until it answers 200; fail with the server's log if it dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send a signal and wait for the process to exit; return its exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            self._log_file.close()
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self._log_file.closed:
            self._log_file.close()
