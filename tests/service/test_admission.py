"""What the service tells whom, and whom it lets in, against a real uvicorn: ``/readyz`` names no rig,
``Accept`` is matched with its quality values (``q=0`` refuses a type), and fusion-only requests go
through the same admission as the rest, so a flood of them is answered 503 with Retry-After."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from bev_service.service.negotiate import best_match
from tests.conftest import DEFAULT_RIG
from tests.service.conftest import Files, LiveServer, overload_rejections

TOKEN = "admission-test-token"


def test_readyz_names_no_rigs(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(api_token=TOKEN)
    data = {**yaml.safe_load(DEFAULT_RIG.read_text()), "rig_id": "secret-yard-7"}
    data["grid"]["cell_size_m"] = 0.5
    auth = {"Authorization": f"Bearer {TOKEN}"}
    stored = httpx.put(
        live.url("/v1/rigs/secret-yard-7"), content=yaml.safe_dump(data), headers={**auth, "content-type": "application/yaml"}
    )
    assert stored.status_code == 201, stored.text
    for headers in ({}, auth):
        ready = httpx.get(live.url("/readyz"), headers=headers)
        assert ready.status_code == 200 and ready.json() == {"ready": True}, ready.text
        assert "secret-yard-7" not in ready.text and "default" not in ready.text
    assert "secret-yard-7" in httpx.get(live.url("/v1/rigs"), headers=auth).text, "the rigs are told with the token"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", "application/json"),
        ("*/*", "application/json"),
        ("image/png", "image/png"),
        ("image/png;q=0, application/json", "application/json"),
        ("image/png;q=0, */*", "application/json"),
        ("image/png;q=0.9, application/octet-stream;q=0.5", "image/png"),
        ("image/png;q=0.4, application/octet-stream;q=0.5", "application/octet-stream"),
        ("image/*;q=0.8, application/json;q=0.2", "image/png"),
        ("text/html, application/xhtml+xml, */*;q=0.8", "application/json"),  # a browser
        ("*/*;q=0", None),
        ("image/png;q=0", None),
        ("text/html", None),
        ("image/png;q=abc", "image/png"),  # an unreadable q counts as 1
    ],
)
def test_accept_is_matched_by_quality(accept: str, expected: str | None) -> None:
    assert best_match(accept, ("application/json", "image/png", "application/octet-stream")) == expected


def test_accept_q_zero_is_honoured_by_the_service(server: LiveServer, image_files: Files) -> None:
    def post(accept: str) -> httpx.Response:
        return httpx.post(server.url("/v1/bev"), files=image_files, headers={"Accept": accept}, timeout=60)

    assert post("image/png;q=0, application/json").headers["content-type"] == "application/json"
    assert post("application/json;q=0.1, image/png").headers["content-type"] == "image/png"
    refused = post("image/png;q=0")
    assert refused.status_code == 406 and refused.json()["error"] == "not_acceptable", refused.text
    assert "format=" in refused.json()["detail"]
    as_json = httpx.get(server.url("/v1/rigs/default"), headers={"Accept": "application/yaml;q=0, application/json"})
    assert as_json.headers["content-type"] == "application/json" and "yaml" in as_json.json()
    as_yaml = httpx.get(server.url("/v1/rigs/default"), headers={"Accept": "application/yaml"})
    assert as_yaml.headers["content-type"].startswith("application/yaml")


def test_a_fusion_only_flood_is_refused_with_503(make_server: Callable[..., LiveServer], label_files: Files) -> None:
    """Fusion-only requests skip the network but not admission: with room for two, sixteen clients
    sending at once get some 503s with Retry-After, every other request is answered, and the rejections
    are counted."""
    live = make_server(queue_size=1, max_batch=1, warmup=False)

    def client(_: int) -> list[httpx.Response]:
        with httpx.Client(base_url=live.base_url, timeout=120) as c:
            return [c.post("/v1/bev", files=label_files, data={"labels": "true"}, params={"format": "raw"}) for _ in range(4)]

    with ThreadPoolExecutor(16) as pool:
        replies = [r for batch in pool.map(client, range(16)) for r in batch]
    statuses = sorted({r.status_code for r in replies})
    assert statuses == [200, 503], statuses
    for reply in replies:
        if reply.status_code == 503:
            assert reply.json()["error"] == "overloaded" and int(reply.headers["retry-after"]) >= 1, reply.text
    rejected = overload_rejections(live)
    assert rejected == sum(r.status_code == 503 for r in replies)
    assert httpx.post(live.url("/v1/bev"), files=label_files, data={"labels": "true"}, timeout=60).status_code == 200


def test_a_refused_request_is_one_log_line_with_its_id(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    """A client's mistake costs one INFO line naming the request's id (the client's X-Request-ID when
    well-formed, else a new one, sent back either way), never a traceback."""
    with caplog.at_level(logging.DEBUG):
        mine = httpx.put(
            server.url("/v1/rigs/deep"),
            content=b"a: " + b"[" * 5000,
            headers={"content-type": "application/yaml", "x-request-id": "car-17.run-3"},
        )
        theirs = httpx.get(server.url("/v1/rigs/nope"), headers={"x-request-id": "bad id\twith spaces"})
    assert mine.status_code == 422 and mine.headers["x-request-id"] == "car-17.run-3"
    assert theirs.status_code == 404 and re.fullmatch(r"[0-9a-f]{16}", theirs.headers["x-request-id"])
    assert httpx.get(server.url("/healthz")).headers["x-request-id"]
    for request_id, status in (("car-17.run-3", 422), (theirs.headers["x-request-id"], 404)):
        lines = [r for r in caplog.records if request_id in r.getMessage() and r.name.startswith("bev_service")]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert lines[0].levelno == logging.INFO and f"-> {status}" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
