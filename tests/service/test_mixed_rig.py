"""A rig of mixed cameras, end to end: a 1920x1080 pinhole front camera (ROS CameraInfo, plumb_bob) and three
1280x966 WoodScape fisheyes (radial polynomial, written as OCam cameras), imported, stored in a running
service and rendered by the synthetic world. Fusion-only label maps at the calibrated sizes give the
oracle grid cell for cell; images run each camera at its own network size."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import yaml

from bev_service.calib.importers import import_camera_info, import_woodscape_json
from bev_service.calib.rigfile import load_rig, rig_to_yaml, save_rig
from bev_service.geometry.rig import Rig
from bev_service.geometry.transforms import vehicle_from_camera_mount
from bev_service.synth import SyntheticWorld, renderer_for
from tests.calib.test_import_woodscape_camera_info import camera_info, ws_document
from tests.service.conftest import LiveServer, as_files, label_png
from tests.service.test_rigs import png_ids

FISHEYES = (("RV", (-1.0, 0.0, 0.95), 180.0, 30.0), ("MVL", (2.0, 1.0, 1.0), 90.0, 60.0), ("MVR", (2.0, -1.0, 1.0), -90.0, 60.0))


@pytest.fixture(scope="module")
def mixed_rig(tmp_path_factory: pytest.TempPathFactory) -> Rig:
    folder = tmp_path_factory.mktemp("mixed")
    paths = []
    for name, position, yaw, pitch in FISHEYES:
        paths.append(folder / f"00000_{name}.json")
        paths[-1].write_text(json.dumps(ws_document(name, position, yaw, pitch)))
    fisheyes = import_woodscape_json(paths, cell_size_m=0.1).rig
    info = camera_info("front")
    info.update(image_width=1920, image_height=1080)
    info["camera_matrix"]["data"] = [960.0, 0.0, 959.5, 0.0, 960.0, 539.5, 0.0, 0.0, 1.0]
    info["distortion_coefficients"]["data"] = [-0.05, 0.01, 0.0, 0.0, 0.0]
    (folder / "front.yaml").write_text(yaml.safe_dump(info))
    poses = {"front": {"vehicle_from_camera": {"matrix": vehicle_from_camera_mount((3.7, 0.0, 1.3), 0.0, 25.0).tolist()}}}
    (folder / "poses.yaml").write_text(yaml.safe_dump(poses))
    front = import_camera_info([folder / "front.yaml"], folder / "poses.yaml").rig.cameras[0]
    rig = Rig("mixed", "1", (front, *fisheyes.cameras), fisheyes.grid, fisheyes.ego, fisheyes.origin_note)
    save_rig(rig, folder / "mixed.yaml")
    return load_rig(folder / "mixed.yaml")


def test_a_rig_of_mixed_cameras_is_served_and_fuses_to_the_oracle(mixed_rig: Rig, make_server: Callable[..., LiveServer]) -> None:
    assert [c.image_size_hw for c in mixed_rig.cameras] == [(1080, 1920), (966, 1280), (966, 1280), (966, 1280)]
    assert [type(c.model).__name__ for c in mixed_rig.cameras] == ["PinholeCamera", "OcamCamera", "OcamCamera", "OcamCamera"]
    live = make_server()
    stored = httpx.put(
        live.url("/v1/rigs/mixed"), content=rig_to_yaml(mixed_rig), headers={"content-type": "application/yaml"}, timeout=120
    )
    assert stored.status_code == 201, stored.text
    sizes = {c["name"]: c["input_size_wh"] for c in stored.json()["cameras"]}
    assert len({tuple(s) for s in sizes.values()}) == 2, sizes  # one shape for the pinhole, one for the fisheyes

    world = SyntheticWorld(5)
    frame_set = renderer_for(mixed_rig, 1.0).render(world, world.sample_pose(np.random.default_rng(5)), seed=1)
    assert frame_set.labels["front"].shape == (1080, 1920) and frame_set.labels["rear"].shape == (966, 1280)
    labels = as_files({name: label_png(frame_set.labels[name]) for name in mixed_rig.camera_names}, "png", "image/png")
    fused = httpx.post(live.url("/v1/bev"), files=labels, data={"rig": "mixed", "labels": "true"}, timeout=120)
    assert fused.status_code == 200, fused.text
    np.testing.assert_array_equal(png_ids(base64.b64decode(fused.json()["grid"]["png_base64"])), frame_set.bev_oracle)

    images = as_files(dict(frame_set.jpeg))
    reply = httpx.post(live.url("/v1/bev"), files=images, data={"rig": "mixed"}, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["input_size_wh"] == sizes
