"""What the OpenAPI document promises: a typed reply for every route, the served rig's cameras as the
fields of the ``POST /v1/bev`` form; and one error kind per bad input, over REST and the stream alike."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import yaml
from websockets.sync.client import connect

from bev_service.service.app import create_app
from bev_service.service.settings import Settings
from bev_service.synth import RenderedFrameSet
from tests.conftest import DEFAULT_RIG
from tests.service.conftest import LiveServer, as_files

RENAMED = {"front": "nose", "left": "port", "rear": "tail", "right": "starboard"}


def renamed_rig_yaml() -> str:
    data = yaml.safe_load(DEFAULT_RIG.read_text())
    for camera in data["cameras"]:
        camera["name"] = RENAMED[camera["name"]]
    return yaml.safe_dump(data, sort_keys=False)


def typed(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    """A schema that says what the reply holds: a model, an array of typed items, or a string/bytes."""
    if "$ref" in schema:
        return typed(components[schema["$ref"].rsplit("/", 1)[-1]], components)
    if schema.get("type") == "array":
        return typed(schema.get("items", {}), components)
    if schema.get("type") == "object":
        return bool(schema.get("properties"))
    return schema.get("type") in ("string", "integer", "number", "boolean")


def form_fields(document: dict[str, Any]) -> set[str]:
    body = document["paths"]["/v1/bev"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    return set(body["properties"]) - {"rig", "labels"}


def test_every_route_documents_a_typed_reply(settings_for: Callable[..., Settings]) -> None:
    document = create_app(settings_for()).openapi()
    components = document["components"]["schemas"]
    seen = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            ok = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
            assert ok, (method, path)
            if method == "delete":
                assert set(ok) == {"204"} and "content" not in ok["204"], (method, path, ok)
                continue
            for code, reply in ok.items():
                content = reply.get("content")
                assert content, (method, path, code, "no reply content")
                for media_type, body in content.items():
                    assert typed(body.get("schema", {}), components), (method, path, code, media_type, body)
            seen += 1
    assert seen >= 11


def test_the_bev_form_has_the_configured_rigs_cameras(settings_for: Callable[..., Settings], tmp_path: Path) -> None:
    rig = tmp_path / "renamed.yaml"
    rig.write_text(renamed_rig_yaml())
    document = create_app(settings_for(rig=rig)).openapi()  # not started: the configured rig file
    assert form_fields(document) == set(RENAMED.values())


def test_the_bev_form_has_the_served_rigs_cameras(
    server: LiveServer, make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    document = httpx.get(server.url("/openapi.json")).json()
    assert form_fields(document) == {"front", "left", "rear", "right"}
    # A stored rig served as the default (BEV_DEFAULT_RIG_ID) gives the form its cameras.
    (tmp_path / "renamed.yaml").write_text(renamed_rig_yaml().replace("rig_id: default", "rig_id: renamed"))
    replaced = make_server(rigs_dir=tmp_path, default_rig_id="renamed")
    document = httpx.get(replaced.url("/openapi.json")).json()
    assert form_fields(document) == set(RENAMED.values())
    rigs = httpx.get(replaced.url("/v1/rigs")).json()
    assert rigs["default"] == "renamed"
    served = next(r for r in rigs["rigs"] if r["id"] == "renamed")
    assert {c["name"] for c in served["cameras"]} == set(RENAMED.values())


@pytest.mark.parametrize(
    ("case", "kind"),
    [("unknown-rig", "unknown_rig"), ("missing-camera", "bad_frame"), ("truncated-image", "bad_frame")],
)
def test_a_stream_error_has_the_kind_of_the_rest_error(
    case: str, kind: str, server: LiveServer, frame_set: RenderedFrameSet
) -> None:
    images = dict(frame_set.jpeg)
    rig = None
    if case == "unknown-rig":
        rig = "no-such-rig"
    elif case == "missing-camera":
        del images["left"]
    else:
        images["front"] = images["front"][:1000]
    rest = httpx.post(
        server.url("/v1/bev"), files=as_files(images), data={"rig": rig} if rig else {}, params={"format": "raw"}, timeout=60
    )
    assert rest.status_code >= 400 and rest.json()["error"] == kind, rest.text
    message: dict[str, Any] = {"seq": 1, "stamp": 1.0, "images": images, **({"rig": rig} if rig else {})}
    with connect(server.ws_url, max_size=None) as ws:
        ws.send(msgpack.packb(message, use_bin_type=True))
        reply = msgpack.unpackb(ws.recv(timeout=30), raw=False)
    assert reply["seq"] == 1 and reply["kind"] == kind, reply
    assert rest.json()["detail"] == reply["error"], "the same words both ways"


def test_a_malformed_stream_message_is_a_bad_frame(server: LiveServer) -> None:
    with connect(server.ws_url, max_size=None) as ws:
        ws.send(msgpack.packb({"seq": 3}))
        reply = msgpack.unpackb(ws.recv(timeout=30), raw=False)
    assert reply == {"seq": 3, "error": reply["error"], "kind": "bad_frame"} and "images" in reply["error"], reply
