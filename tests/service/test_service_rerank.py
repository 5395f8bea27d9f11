"""Both rankings of POST /v1/search (hamming, asymmetric) through the real server."""

import itertools
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from bundle.text import Vocabulary
from index.codes import hamming, unpack_codes
from tests.support.service_bundle import AUTH, VOCAB, ServerProcess, build_bundle, png

pytestmark = pytest.mark.slow

BITS = 16
# Texts of two or three of six words, each written three times: equal codes tie exactly (by
# write order), and 16 bits put many other texts at each Hamming distance.
WORDS = ["cat", "dog", "sea", "car", "red", "night"]
TEXTS = [" ".join(c) for n in (2, 3) for c in itertools.combinations(WORDS, n)] * 3


def real_values(bundle: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    """The query's code and real values, from the bundle's own text encoder."""
    bag, _ = Vocabulary(list(VOCAB)).vectorize([text])
    module = torch.jit.load(str(bundle / "text.pt"))
    with torch.inference_mode():
        codes, values = module.codes_and_values(torch.from_numpy(bag))
    return codes.numpy()[0], values.numpy()[0].astype(np.float64)


@pytest.mark.parametrize("backend", ["faiss", "milvus-lite"])
def test_search_answers_both_rankings_through_the_real_server(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    bundle = build_bundle(tmp_path / "bundle", bits=BITS, values=True, seed=3)
    env = {}
    if backend == "milvus-lite":
        uri = request.getfixturevalue("milvus_lite_uri")
        env = {"HASHBRIDGE_INDEX_BACKEND": "milvus", "HASHBRIDGE_MILVUS_URI": uri}
    with ServerProcess(bundle, tmp_path / "data", tmp_path / "server.log", **env) as server:
        server.wait_ready(timeout=300)  # a loaded 2-core machine imports torch slowly
        with httpx.Client(base_url=server.url, timeout=60) as http:
            items = http.post(
                "/v1/items", json={"items": [{"text": t} for t in TEXTS]}, headers=AUTH
            ).json()["items"]
            http.post("/v1/items", files=[("files", ("a.png", png(1), "image/png"))], headers=AUTH)
            # The backend asked for holds the items (Milvus mode keeps no local store).
            assert (tmp_path / "data" / "store.sqlite3").exists() == (backend == "faiss")
            ids = np.array([i["id"] for i in items])
            codes = np.stack([np.frombuffer(bytes.fromhex(i["code"]), np.uint8) for i in items])
            assert len(np.unique(codes, axis=0)) < len(TEXTS) / 2  # tie-heavy
            query = "red cat at night by the sea"
            code, values = real_values(bundle, query)
            scores = -(unpack_codes(codes, BITS).astype(np.float64) @ values)
            distances = hamming(codes, code)
            k = 12
            # Ties fall by id: on FAISS ids rise in write order here, Milvus's are by id.
            by_score = ids[np.lexsort((ids, scores))][:k]
            by_distance = ids[np.lexsort((ids, distances))][:k]
            row_of = {int(i): r for r, i in enumerate(ids)}
            assert by_score.tolist() != by_distance.tolist()  # the rankings really differ
            for ask in (None, "asymmetric", "hamming"):
                extra = {} if ask is None else {"rerank": ask}
                as_json = http.post(
                    "/v1/search",
                    json={"text": query, "k": k, "modalities": ["text"], **extra},
                ).json()
                fields = {"text": query, "k": str(k), "modalities": "text", **extra}
                as_form = http.post(
                    "/v1/search", files=[(n, (None, v)) for n, v in fields.items()]
                ).json()
                for body in (as_json, as_form):
                    assert body["query"]["code"] == code.tobytes().hex()
                    got = [h["id"] for h in body["results"]]
                    if ask == "hamming":
                        assert body["rerank"] == "hamming"
                        assert got == by_distance.tolist()
                        assert all(h["score"] is None for h in body["results"])
                    else:  # the asymmetric ranking is the default for a text query
                        assert body["rerank"] == "asymmetric"
                        assert got == by_score.tolist()
                        want = scores[[row_of[i] for i in got]]
                        np.testing.assert_allclose(
                            [h["score"] for h in body["results"]], want, atol=1e-5
                        )
                    assert [h["distance"] for h in body["results"]] == [
                        int(distances[row_of[i]]) for i in got
                    ]
            # A hex code has no real values: Hamming by default, and asymmetric is refused.
            hexed = http.post("/v1/search", json={"code": code.tobytes().hex(), "k": k})
            assert hexed.json()["rerank"] == "hamming"
            refused = http.post(
                "/v1/search", json={"code": code.tobytes().hex(), "rerank": "asymmetric"}
            )
            assert refused.status_code == 422
            assert "hex code" in refused.json()["detail"]
            bad = http.post(
                "/v1/search", files=[("text", (None, query)), ("rerank", (None, "cosine"))]
            )
            assert bad.status_code == 422 and "rerank" in bad.text
