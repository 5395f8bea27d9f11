"""Abuse resistance of the HTTP API: requests other sites' pages make a browser send."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.encoders import Bundle
from tests.support.service_bundle import (
    PROBLEM,
    ServerProcess,
    ingest_texts,
    make_settings,
    open_client,
    png,
)

#: What a browser sends with a form that a page on https://evil.example posts to the service.
EVIL_FORM_HEADERS = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}


@pytest.fixture
def keyless(svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path) -> Iterator[TestClient]:
    """A running app without an API key, as `hashbridge serve` on 127.0.0.1 runs by default."""
    settings = make_settings(svc_bundle_dir, tmp_path / "data", api_key=None)
    with open_client(settings, svc_bundle) as c:
        yield c


def test_cross_site_form_cannot_plant_or_replace_items(keyless: TestClient) -> None:
    kept = ingest_texts(keyless, ["a red car"], client_id="beach")[0]
    r = keyless.post(
        "/v1/items",
        data={"items": '[{"text": "planted", "client_id": "beach"}]'},
        files=[("files", ("x.png", png(1), "image/png"))],
        headers=EVIL_FORM_HEADERS,
    )
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["type"].endswith("cross-site-write")
    assert "evil.example" in r.json()["detail"]
    assert keyless.get(f"/v1/items/{kept['id']}").json()["code"] == kept["code"]
    assert keyless.get("/v1/stats").json()["count"] == 1


def test_cross_site_delete_is_refused(keyless: TestClient) -> None:
    kept = ingest_texts(keyless, ["a red car"])[0]
    r = keyless.delete(f"/v1/items/{kept['id']}", headers=EVIL_FORM_HEADERS)
    assert r.status_code == 403, r.text
    assert keyless.get(f"/v1/items/{kept['id']}").status_code == 200


def test_foreign_origin_without_fetch_metadata_is_refused(keyless: TestClient) -> None:
    # Older browsers send Origin but no Sec-Fetch-Site; an opaque "null" origin is foreign too.
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        r = keyless.post(
            "/v1/items", data={"items": '[{"text": "planted"}]'}, headers={"Origin": origin}
        )
        assert r.status_code == 403, (origin, r.text)
    assert keyless.get("/v1/stats").json()["count"] == 0


def test_same_origin_and_plain_clients_still_write(keyless: TestClient) -> None:
    # TestClient's Host is "testserver": the service's own page, and curl (no Origin at all).
    same_origin = [
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://testserver"},
        {"Sec-Fetch-Site": "none"},
        {},
    ]
    for i, headers in enumerate(same_origin):
        r = keyless.post("/v1/items", json={"items": [{"text": f"cat {i}"}]}, headers=headers)
        assert r.status_code == 200, (headers, r.text)


def test_cross_site_reads_are_left_alone(api: TestClient) -> None:
    # A foreign page cannot read answers without CORS, so reads are not refused by origin.
    r = api.post("/v1/search", json={"text": "cat"}, headers=EVIL_FORM_HEADERS)
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------- DNS rebinding


@pytest.fixture(scope="module")
def loopback_server(
    svc_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A real keyless server bound to 127.0.0.1, with HASHBRIDGE_ALLOWED_HOSTS unset."""
    root = tmp_path_factory.mktemp("rebinding")
    with ServerProcess(svc_bundle_dir, root / "data", root / "log", HASHBRIDGE_API_KEY="") as p:
        p.wait_ready()
        yield p
        p.stop()


def test_a_rebound_hostname_gets_400_and_changes_nothing(loopback_server: Any) -> None:
    url, port = loopback_server.url, loopback_server.port
    with httpx.Client(base_url=url, timeout=30) as http:
        before = http.get("/v1/stats").json()
        # What a page on evil.example sends once its name resolves to 127.0.0.1: its own
        # Host and Origin, which the cross-site guard alone cannot tell from the service's.
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        planted = http.post(
            "/v1/items", files={"items": (None, '[{"text": "planted"}]')}, headers=rebound
        )
        assert planted.status_code == 400, planted.text
        assert planted.headers["content-type"] == PROBLEM
        assert planted.json()["type"] == "urn:hashbridge:problem:host-not-allowed"
        assert "'evil.example'" in planted.json()["detail"]
        assert "HASHBRIDGE_ALLOWED_HOSTS" in planted.json()["detail"]
        # Reads too: a rebinding page could otherwise read the collection out.
        assert http.get("/v1/stats", headers={"Host": f"evil.example:{port}"}).status_code == 400
        assert http.delete("/v1/items/1", headers=rebound).status_code == 400
        assert http.get("/v1/stats").json() == before
        # The loopback names, as a browser on this machine writes them, are served.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", f"[::1]:{port}"):
            r = http.post("/v1/items", json={"items": [{"text": "kept"}]}, headers={"Host": host})
            assert r.status_code == 200, (host, r.text)
        assert http.get("/v1/stats").json()["count"] == before["count"] + 4


@pytest.mark.parametrize(
    ("bound", "allowed", "host", "served"),
    [
        ("127.0.0.1", None, "evil.example", False),
        ("127.0.0.1", None, "localhost", True),
        ("0.0.0.0", None, "search.example", True),  # bound for others: any name, as before
        ("0.0.0.0", "search.example", "evil.example", False),
        ("0.0.0.0", "search.example", "Search.Example:8080", True),
        ("0.0.0.0", "search.example", "127.0.0.1:8080", True),
        ("127.0.0.1", "*.example.org", "a.b.example.org", True),
        ("127.0.0.1", "*.example.org", "example.org.evil.example", False),
        ("127.0.0.1", "*", "anything.example", True),
    ],
)
def test_allowed_hosts(
    svc_bundle_dir: Path,
    svc_bundle: Bundle,
    tmp_path: Path,
    bound: str,
    allowed: str | None,
    host: str,
    served: bool,
) -> None:
    settings = make_settings(svc_bundle_dir, tmp_path / "data", host=bound, allowed_hosts=allowed)
    with open_client(settings, svc_bundle) as c:
        r = c.get("/v1/stats", headers={"Host": host})
    assert (r.status_code == 200) == served, r.text
    if not served:
        assert r.status_code == 400 and r.json()["type"].endswith("host-not-allowed")
