"""Property-based requests generated from /openapi.json (schemathesis) against a real server.

Every answer must be documented (status, content type, body schema) and none a 5xx; run
against a server with an API key (the requests send it) and one without. Bounded and
derandomized: hypothesis draws the same cases every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.service_bundle import AUTH, ServerProcess, png

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CASES_PER_OPERATION = 20


def _serve(bundle: Path, root: Path, **env: str) -> Iterator[ServerProcess]:
    with ServerProcess(bundle, root / "data", root / "server.log", **env) as proc:
        proc.wait_ready()
        with httpx.Client(base_url=proc.url, headers=AUTH, timeout=30) as http:
            files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(3)]
            assert http.post("/v1/items", files=files).status_code == 200
            texts = [{"text": t, "client_id": t} for t in ("a cat", "red car", "blue sea")]
            assert http.post("/v1/items", json={"items": texts}).status_code == 200
        yield proc
        proc.stop()


@pytest.fixture(scope="module")
def keyed_server(svc_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from _serve(svc_bundle_dir, tmp_path_factory.mktemp("fuzz-key"))


@pytest.fixture(scope="module")
def open_server(svc_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from _serve(svc_bundle_dir, tmp_path_factory.mktemp("fuzz-open"), HASHBRIDGE_API_KEY="")


@pytest.fixture(scope="module")
def keyed_schema(keyed_server: ServerProcess) -> Any:
    return schemathesis.openapi.from_url(f"{keyed_server.url}/openapi.json")


@pytest.fixture(scope="module")
def open_schema(open_server: ServerProcess) -> Any:
    return schemathesis.openapi.from_url(f"{open_server.url}/openapi.json")


FUZZ = settings(
    max_examples=CASES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def fuzz(schema: Any, headers: dict[str, str]) -> list[str]:
    """Run every operation's generated cases; return the operations run."""
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()

        # schemathesis' own pytest plugin does not load under this pytest: hypothesis
        # drives each operation's strategy directly (derandomize: the same cases each run).
        @FUZZ
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        check()
        ran.append(operation.label)
    return ran


OPERATIONS = {
    "POST /v1/items",
    "POST /v1/items/lookup",
    "GET /v1/items/{item_id}",
    "DELETE /v1/items/{item_id}",
    "GET /v1/items/{item_id}/thumbnail",
    "POST /v1/search",
    "POST /v1/encode",
    "GET /v1/stats",
}


def test_every_answer_with_the_key_is_documented_and_none_is_a_5xx(keyed_schema: Any) -> None:
    assert OPERATIONS <= set(fuzz(keyed_schema, AUTH))


def test_every_answer_without_a_key_is_documented_and_none_is_a_5xx(open_schema: Any) -> None:
    assert OPERATIONS <= set(fuzz(open_schema, {}))
