"""The service API over each index backend: the API and thumbnail tests, run against the
FAISS backend and against Milvus (milvus-lite in-process), and how a Milvus that cannot be
reached is answered.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.reference import NumpyHammingIndex
from service.encoders import Bundle
from service.errors import IndexBackendError
from tests.service import test_service_api as api_tests
from tests.service import test_thumbnails as thumbnail_tests
from tests.support.milvus import TcpRelay
from tests.support.service_bundle import (
    AUTH,
    PROBLEM,
    ingest_files,
    ingest_texts,
    make_settings,
    open_client,
    png,
)

# Every API and thumbnail test that runs on the `api` fixture alone, on each backend, but
# those whose subject is the local backend itself, each with the reason.
LOCAL_ONLY = {
    # Ranks ties by write order, the FAISS backend's; test_cross_modal_ranking_follows_the_
    # tie_order below checks ties per backend.
    "test_ingest_texts_and_images_then_search_each_way",
}


def api_tests_of(*modules: Any) -> list[Callable[..., None]]:
    """The unparametrized tests of these modules whose fixtures include `api`."""
    return [
        f
        for m in modules
        for name, f in vars(m).items()
        if name.startswith("test_")
        and callable(f)
        and "api" in inspect.signature(f).parameters
        and not hasattr(f, "pytestmark")
        and name not in LOCAL_ONLY
    ]


ON_EACH_BACKEND: list[Callable[..., None]] = api_tests_of(api_tests, thumbnail_tests)


def milvus_settings(bundle_dir: Path, data_dir: Path, uri: str, **overrides: Any) -> Any:
    return make_settings(bundle_dir, data_dir, index_backend="milvus", milvus_uri=uri, **overrides)


@pytest.fixture(params=["faiss", "milvus-lite"])
def backend_api(
    request: pytest.FixtureRequest, svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path
) -> Iterator[TestClient]:
    """A running app on an empty collection of each backend."""
    if request.param == "faiss":
        settings = make_settings(svc_bundle_dir, tmp_path / "data")
    else:
        uri = request.getfixturevalue("milvus_lite_uri")
        settings = milvus_settings(svc_bundle_dir, tmp_path / "data", uri)
    with open_client(settings, svc_bundle) as client:
        yield client


@pytest.mark.parametrize("api_test", ON_EACH_BACKEND, ids=lambda f: f.__name__[5:])
def test_api_with_each_backend(
    api_test: Callable[..., None], backend_api: TestClient, request: pytest.FixtureRequest
) -> None:
    args = {
        name: backend_api if name == "api" else request.getfixturevalue(name)
        for name in inspect.signature(api_test).parameters
    }
    api_test(**args)


def test_cross_modal_ranking_follows_the_tie_order(backend_api: TestClient) -> None:
    images = ingest_files(backend_api, [(f"img{i}.png", png(i)) for i in range(8)])
    ingest_texts(backend_api, ["a red car", "the sea"])
    r = backend_api.post("/v1/search", json={"text": "a red car", "k": 8, "modalities": ["image"]})
    res = r.json()
    tie_order = backend_api.app.state.runtime.collection.tie_order
    # The NumPy reference ranks ties in the order items are added to it.
    ordered = images if tie_order == "write" else sorted(images, key=lambda i: i["id"])
    ref = NumpyHammingIndex(32)
    ref.add(
        [i["id"] for i in ordered],
        np.array([list(bytes.fromhex(i["code"])) for i in ordered], np.uint8),
    )
    want = ref.search(np.array([list(bytes.fromhex(res["query"]["code"]))], np.uint8), 8)
    assert [h["id"] for h in res["results"]] == want.ids[0].tolist()
    assert [h["distance"] for h in res["results"]] == want.distances[0].tolist()


def test_milvus_mode_keeps_items_in_milvus_not_the_data_dir(
    svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path, milvus_lite_uri: str
) -> None:
    settings = milvus_settings(svc_bundle_dir, tmp_path / "data", milvus_lite_uri)
    with open_client(settings, svc_bundle) as api:
        (item,) = ingest_texts(api, ["a cat on a mat"], client_id="c")
    assert not (tmp_path / "data" / "store.sqlite3").exists()
    # A second app on the same collection (another replica's view) finds it.
    with open_client(settings, svc_bundle) as api:
        hits = api.post("/v1/search", json={"code": item["code"], "k": 1}).json()["results"]
        assert [(h["id"], h["client_id"], h["distance"]) for h in hits] == [(item["id"], "c", 0)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_milvus_fails_start_up_saying_what(
    svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path
) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    settings = milvus_settings(svc_bundle_dir, tmp_path / "d", uri, milvus_timeout_s=1.0)
    with pytest.raises(IndexBackendError, match=f"Milvus at {uri}: cannot connect"):
        with open_client(settings, svc_bundle):
            pass


def test_a_collection_indexed_otherwise_fails_start_up_naming_the_setting(
    svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path, milvus_lite_uri: str
) -> None:
    settings = milvus_settings(svc_bundle_dir, tmp_path / "d", milvus_lite_uri)
    with open_client(settings, svc_bundle) as api:
        ingest_texts(api, ["kept"], client_id="kept")
    ivf = milvus_settings(
        svc_bundle_dir, tmp_path / "d", milvus_lite_uri, milvus_index="BIN_IVF_FLAT"
    )
    with pytest.raises(IndexBackendError, match="indexed BIN_FLAT.*HASHBRIDGE_MILVUS_INDEX"):
        with open_client(ivf, svc_bundle):
            pass
    with open_client(settings, svc_bundle) as api:
        assert api.get("/v1/stats").json()["count"] == 1


def test_milvus_lost_mid_life_answers_503_problems(
    svc_bundle_dir: Path,
    svc_bundle: Bundle,
    tmp_path: Path,
    milvus_server_uri: str,
    milvus_collection_name: str,
) -> None:
    relay = TcpRelay(int(milvus_server_uri.rsplit(":", 1)[1]))
    settings = milvus_settings(
        svc_bundle_dir,
        tmp_path / "d",
        f"http://127.0.0.1:{relay.port}",
        milvus_collection=milvus_collection_name,
        milvus_timeout_s=2.0,
    )
    with open_client(settings, svc_bundle) as api:
        (item,) = ingest_texts(api, ["a dog"])
        relay.cut()
        answers = [
            api.post("/v1/search", json={"code": item["code"], "k": 3}),
            api.post("/v1/items", json={"items": [{"text": "a cat"}]}, headers=AUTH),
            api.get(f"/v1/items/{item['id']}"),
            api.delete(f"/v1/items/{item['id']}", headers=AUTH),
            api.get("/v1/stats"),
        ]
        for r in answers:
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == PROBLEM
            assert r.json()["type"].endswith(":index-unavailable")
            assert f"Milvus at http://127.0.0.1:{relay.port}" in r.json()["detail"]
            assert r.headers["retry-after"] == "5"
