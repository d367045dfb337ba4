"""Per-camera label maps with the grid, on request: ``camera_labels=true`` on ``POST /v1/bev`` (query or form
field) and in a stream message. Each is a palette PNG of class ids at the camera's network size, and
warping them through the rig's tables gives the grid of the same reply, cell for cell."""

from __future__ import annotations

import base64

import httpx
import msgpack
import numpy as np
from websockets.sync.client import connect

from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Rig
from bev_service.imageio import decode_labels
from bev_service.synth import RenderedFrameSet
from tests.service.conftest import Files, LiveServer
from tests.service.test_rigs import png_ids


def check_maps(maps: dict[str, bytes], grid: np.ndarray, rig: Rig, sizes_wh: dict[str, list[int]]) -> None:
    assert list(maps) == list(rig.camera_names)
    decoded = [decode_labels(maps[name]) for name in rig.camera_names]
    for name, labels in zip(rig.camera_names, decoded, strict=True):
        assert [labels.shape[1], labels.shape[0]] == sizes_wh[name]
    np.testing.assert_array_equal(BevProjector(rig).warp_labels(decoded), grid)


def test_rest_sends_the_camera_label_maps_on_request(server: LiveServer, image_files: Files, default_rig: Rig) -> None:
    plain = httpx.post(server.url("/v1/bev"), files=image_files, timeout=60).json()
    assert plain["camera_labels"] is None
    for request in ({"params": {"camera_labels": "true"}}, {"data": {"camera_labels": "true"}}):
        reply = httpx.post(server.url("/v1/bev"), files=image_files, timeout=60, **request)  # type: ignore[arg-type]
        assert reply.status_code == 200, reply.text
        body = reply.json()
        maps = {name: base64.b64decode(png) for name, png in body["camera_labels"].items()}
        check_maps(maps, png_ids(base64.b64decode(body["grid"]["png_base64"])), default_rig, body["input_size_wh"])


def test_the_stream_sends_them_on_request(server: LiveServer, frame_set: RenderedFrameSet, default_rig: Rig) -> None:
    with connect(server.ws_url, max_size=None) as ws:
        ws.send(msgpack.packb({"seq": 1, "stamp": 0.0, "images": dict(frame_set.jpeg), "camera_labels": True}, use_bin_type=True))
        reply = msgpack.unpackb(ws.recv(timeout=60), raw=False)
        ws.send(
            msgpack.packb({"seq": 2, "stamp": 0.0, "images": dict(frame_set.jpeg), "camera_labels": "yes"}, use_bin_type=True)
        )
        refused = msgpack.unpackb(ws.recv(timeout=60), raw=False)
    assert "error" not in reply, reply
    sizes = {c["name"]: c["input_size_wh"] for c in httpx.get(server.url("/v1/rigs/default")).json()["cameras"]}
    check_maps(reply["camera_labels"], png_ids(reply["grid"]), default_rig, sizes)
    assert refused["seq"] == 2 and refused["kind"] == "bad_frame" and "camera_labels" in refused["error"]
