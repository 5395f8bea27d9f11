"""A DVSH bundle served: a real server answers sentence queries with the exported codes.

The session's tiny DVSH run (tests/support/dvsh_fixtures.py) is exported and served by
``python -m service`` on loopback, which never imports model/. Texts of different lengths
arrive as token_ids batches of different widths; the micro-batcher pads them to one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from bundle.inputs import TokenIds
from bundle.text import Vocabulary
from model.checkpoint import load_checkpoint, trained_method
from model.config import config_from_dict
from model.hashing import pack_bits
from model.train import TrainResult
from service.batcher import MicroBatcher
from tests.support.service_bundle import AUTH, REPO, ServerProcess

pytestmark = pytest.mark.slow

TEXTS = [
    "a green triangle next to an orange star",
    "orange star",
    "a red circle on a white background",
    "blue square beside green cross",
    "zebras never seen",
]


def _kind(bundle: Path) -> TokenIds:
    entry = json.loads((bundle / "manifest.json").read_text())["modalities"]["text"]
    return TokenIds(Vocabulary.from_json(entry["vocabulary"]), entry["max_length"])


def _eager_codes(run: TrainResult, texts: list[str], kind: TokenIds) -> list[str]:
    """The trained sentence stream's codes, rebuilt from the checkpoint (not the bundle)."""
    state = load_checkpoint(run.run_dir)
    method = trained_method(state, config_from_dict(state["config"]), run.run_dir)
    with torch.inference_mode():
        codes = pack_bits(method.encode("text", torch.from_numpy(kind.vectorize(texts)[0])))
    return [bytes(c).hex() for c in codes.numpy()]


def test_real_server_answers_a_sentence_query(
    dvsh_bundle: Path, dvsh_trained: TrainResult, dvsh_scenes: Path, tmp_path: Path
) -> None:
    kind = _kind(dvsh_bundle)
    expected = _eager_codes(dvsh_trained, TEXTS, kind)
    images = sorted((dvsh_scenes.parent / "images").glob("*.png"))[:4]
    with ServerProcess(dvsh_bundle, tmp_path / "data", tmp_path / "server.log") as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            r = http.post("/v1/encode", json={"texts": TEXTS})
            assert r.status_code == 200, r.text
            codes = r.json()["codes"]
            assert [c["code"] for c in codes] == expected
            assert [c["known_tokens"] for c in codes] == kind.vectorize(TEXTS)[1]
            assert codes[-1]["known_tokens"] == 0  # none of its words is in the vocabulary
            # Encoded alone, each text is a batch of its own width: the same codes.
            alone = [http.post("/v1/encode", json={"texts": [t]}).json() for t in TEXTS]
            assert [a["codes"][0]["code"] for a in alone] == expected
            texts = http.post(
                "/v1/items",
                json={"items": [{"text": t, "client_id": f"t{i}"} for i, t in enumerate(TEXTS)]},
                headers=AUTH,
            ).json()["items"]
            files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
            pictures = http.post("/v1/items", files=files, headers=AUTH).json()["items"]
            assert len(texts) == len(TEXTS) and len(pictures) == len(images)
            # A sentence query finds its own text first, at Hamming distance 0.
            r = http.post(
                "/v1/search", json={"text": TEXTS[2], "modalities": ["text"], "k": len(TEXTS)}
            )
            assert r.status_code == 200, r.text
            hits = r.json()["results"]
            assert hits[0]["client_id"] == "t2" and hits[0]["distance"] == 0
            assert {h["client_id"] for h in hits} == {f"t{i}" for i in range(len(TEXTS))}
            # And across modalities: the images, nearest first.
            r = http.post("/v1/search", json={"text": TEXTS[0], "modalities": ["image"], "k": 4})
            found = r.json()["results"]
            assert {h["id"] for h in found} == {p["id"] for p in pictures}
            assert [h["distance"] for h in found] == sorted(h["distance"] for h in found)
            # Concurrent requests of different widths, joined by the micro-batcher.
            with ThreadPoolExecutor(4) as pool:
                answers = list(
                    pool.map(
                        lambda t: http.post("/v1/encode", json={"texts": [t, "star"]}).json(),
                        TEXTS * 2,
                    )
                )
            assert [a["codes"][0]["code"] for a in answers] == expected * 2
    assert "Traceback" not in server.output()


def test_the_service_side_never_imports_model(dvsh_bundle: Path) -> None:
    script = """
import sys
from service.encoders import load_bundle
from bundle.inputs import TokenIds
bundle = load_bundle(sys.argv[1])
assert isinstance(bundle.vectorizer, TokenIds), type(bundle.vectorizer)
batch, known = bundle.vectorizer.vectorize(["orange star", "a green triangle next to a star"])
assert batch.shape[1] == 1 + 7, batch.shape
print(bundle.encoders["text"].encode(batch).tobytes().hex())
bad = sorted(m for m in sys.modules if m == "model" or m.startswith("model."))
assert not bad, f"the service imported model/: {bad}"
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHBRIDGE_")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(dvsh_bundle)],
        cwd=REPO,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) == 2 * 2 * 2  # two 16-bit codes, in hex


class _Recorder:
    """An encoder that records the batches it is given; its codes are each row's length."""

    modality, bits = "text", 8

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def encode(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        return batch[:, :1].astype(np.uint8)


def test_the_micro_batcher_pads_token_batches_of_different_widths() -> None:
    kind = TokenIds(Vocabulary(["star", "orange", "a"]), max_length=8)
    encoder = _Recorder()

    async def run() -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(encoder, pool, max_items=16, window_s=0.5, collate=kind.collate)
            batcher.start()
            # The second request is announced while the first is encoded: the worker waits.
            with batcher.expect() as second:
                one = asyncio.ensure_future(batcher.encode(kind.vectorize(["star"])[0]))
                await asyncio.sleep(0.05)
                second()
                two = batcher.encode(kind.vectorize(["a orange star", "a a a a a"])[0])
                results = await asyncio.gather(one, two)
            await batcher.stop()
            return results

    one, two = asyncio.run(run())
    assert one.ravel().tolist() == [1] and two.ravel().tolist() == [3, 5]
    assert len(encoder.batches) == 1  # one encoder call for both requests
    assert encoder.batches[0].tolist() == [
        [1, 2, 0, 0, 0, 0],
        [3, 4, 3, 2, 0, 0],
        [5, 4, 4, 4, 4, 4],
    ]
