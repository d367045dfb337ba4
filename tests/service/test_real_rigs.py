"""The real recordings' rigs run with the shipped model, each camera at its own shape: the pjlab road rig
(1280x1080 fisheyes, kdt-json), the OCam parking rig (1280x960) and the surround-view rig (960x640),
through ``bev infer``, ``POST /v1/bev`` and the stream, which agree cell for cell. Skips when the real
data folder is absent."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from bev_service.calib.importers import import_kdt_json, import_ocam_json, import_surround_view_yaml
from bev_service.calib.rigfile import rig_to_yaml
from bev_service.cli.main import main
from bev_service.geometry.grid import EGO, UNKNOWN
from bev_service.geometry.rig import Rig
from bev_service.imageio import read_labels
from bev_service.shipped import PRUNED_MODEL
from tests.conftest import real_folder
from tests.service.conftest import LiveServer
from tests.service.test_rigs import png_ids
from tests.service.test_stream import frame_message, grid_of, receive


@dataclass(frozen=True)
class Recording:
    rig: Rig
    frames: dict[str, Path]  # camera name: image file


def recording(real_data: Path, name: str) -> Recording:
    folder = real_folder(real_data, name)
    if name == "pjlab-4fisheye-road":
        rig, images = import_kdt_json(folder / "calibration_from_source.json").rig, folder / "imgs"
    elif name == "pjlab-4ocam-parking":
        rig, images = import_ocam_json(folder).rig, folder / "imgs"
    else:
        rig, images = import_surround_view_yaml(folder).rig, folder / "images"
    files = {p.stem.lower(): p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg")}
    frames = {cam: files["back" if cam == "rear" else cam] for cam in rig.camera_names}
    return Recording(rig, frames)


RECORDINGS = ("pjlab-4fisheye-road", "pjlab-4ocam-parking", "surround-view-4fisheye")


@pytest.fixture(scope="module")
def real_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    """The shipped model as ``bev serve`` serves it (int8 on ONNX Runtime), with room for the real rigs' grids."""
    return make_server(model=PRUNED_MODEL, backend="auto", device=None, max_rig_cells=8_000_000, max_total_cells=32_000_000)


@pytest.mark.parametrize("name", RECORDINGS)
def test_a_real_rig_runs_through_rest_the_stream_and_bev_infer(
    name: str, real_data: Path, real_server: LiveServer, tmp_path: Path
) -> None:
    rec = recording(real_data, name)
    rig_id = rec.rig.rig_id
    stored = httpx.put(
        real_server.url(f"/v1/rigs/{rig_id}"),
        content=rig_to_yaml(rec.rig),
        headers={"content-type": "application/yaml"},
        timeout=120,
    )
    assert stored.status_code in (200, 201), stored.text
    sizes = {c["name"]: c["input_size_wh"] for c in stored.json()["cameras"]}
    calibrated = {c.name: c.image_size_hw for c in rec.rig.cameras}
    for camera, (w, h) in sizes.items():
        ch, cw = calibrated[camera]
        assert w % 8 == 0 and h % 8 == 0 and w <= cw and h <= ch, (camera, w, h)
        assert abs((w / h) / (cw / ch) - 1) < 0.02, f"{camera}: {w}x{h} does not keep {cw}x{ch}"

    images = {cam: path.read_bytes() for cam, path in rec.frames.items()}
    files = {
        cam: (path.name, images[cam], "image/png" if path.suffix == ".png" else "image/jpeg") for cam, path in rec.frames.items()
    }
    reply = httpx.post(real_server.url("/v1/bev"), files=files, data={"rig": rig_id}, timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["input_size_wh"] == sizes
    rest = png_ids(base64.b64decode(body["grid"]["png_base64"]))
    assert rest.shape == rec.rig.grid.shape
    ground = (rest != UNKNOWN) & (rest < EGO)
    assert ground.mean() > 0.3, f"only {ground.mean():.2f} of the cells were read from a camera"

    with connect(real_server.ws_url, max_size=None) as ws:
        ws.send(frame_message(1, images, rig=rig_id))
        streamed = receive(ws, timeout_s=120)
    assert "error" not in streamed, streamed
    np.testing.assert_array_equal(grid_of(streamed), rest)

    rig_file = tmp_path / "rig.yaml"
    rig_file.write_text(rig_to_yaml(rec.rig), encoding="utf-8")
    out = tmp_path / "bev.png"
    pairs = [f"{cam}={path}" for cam, path in rec.frames.items()]
    served = httpx.get(real_server.url("/v1/model")).json()["path"]  # the graph the service runs (int8 on a CPU)
    assert main(["infer", "--rig", str(rig_file), "--model", served, "--out", str(out), *pairs]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert {cam: [w, h] for cam, (h, w) in meta["input_sizes_hw"].items()} == sizes
    agree = (read_labels(out) == rest).mean()
    assert agree > 0.999, f"bev infer and the service agree on {agree:.4f} of the cells"
    assert httpx.delete(real_server.url(f"/v1/rigs/{rig_id}")).status_code == 204
