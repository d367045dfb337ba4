"""The WoodScape JSON and ROS CameraInfo importers against each format's documented projection, written here
independently of the importers: WoodScape's radial polynomial (theta from the optical axis, rho =
k1 theta + .. + k4 theta^4, principal point at half the size plus the offset less half a pixel, the
aspect ratio on v), OpenCV's fisheye and pinhole projections (cv2.fisheye.projectPoints, cv2.projectPoints)
for CameraInfo's equidistant, plumb_bob and rational_polynomial; then the imported rigs serve a BEV."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from bev_service.calib.importers import import_camera_info, import_woodscape_json
from bev_service.cli.main import main
from bev_service.errors import CalibrationError
from bev_service.geometry.rig import Camera
from bev_service.geometry.tables import build_ground_tables
from bev_service.geometry.transforms import vehicle_from_camera_mount

# WoodScape-like cameras of a car whose rear axle is the origin: (name, position, yaw of the optical axis, pitch down).
WS_CAMERAS = (
    ("FV", (3.7, 0.0, 0.65), 0.0, 20.0),
    ("RV", (-1.0, 0.0, 0.95), 180.0, 30.0),
    ("MVL", (2.0, 1.0, 1.0), 90.0, 60.0),
    ("MVR", (2.0, -1.0, 1.0), -90.0, 60.0),
)
WS_K = (339.749, -31.988, 48.275, -7.201)


def xyzw_from_matrix(r: np.ndarray) -> np.ndarray:
    """A rotation matrix as the unit quaternion (x, y, z, w), scipy's ``Rotation.as_quat`` order (Shepperd's method)."""
    w = np.sqrt(max(0.0, 1 + np.trace(r))) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + r[0, 0] - r[1, 1] - r[2, 2])) / 2, r[2, 1] - r[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - r[0, 0] + r[1, 1] - r[2, 2])) / 2, r[0, 2] - r[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - r[0, 0] - r[1, 1] + r[2, 2])) / 2, r[1, 0] - r[0, 1])
    return np.array([x, y, z, w])


def matrix_from_xyzw(q: list[float]) -> np.ndarray:
    """scipy's ``Rotation.from_quat(q).as_matrix()`` for a unit (x, y, z, w), written out."""
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def ws_document(name: str, position: tuple[float, float, float], yaw: float, pitch: float, aspect: float = 1.0) -> dict[str, Any]:
    pose = vehicle_from_camera_mount(position, yaw, pitch)
    xyzw = xyzw_from_matrix(pose[:3, :3])
    np.testing.assert_allclose(matrix_from_xyzw(list(xyzw)), pose[:3, :3], atol=1e-12)
    return {
        "name": name,
        "extrinsic": {"quaternion": [float(v) for v in xyzw], "translation": list(position)},
        "intrinsic": {
            "model": "radial_poly",
            "poly_order": 4,
            **{f"k{i + 1}": k for i, k in enumerate(WS_K)},
            "cx_offset": 3.9,
            "cy_offset": -3.1,
            "aspect_ratio": aspect,
            "width": 1280,
            "height": 966,
        },
    }


def woodscape_pixels(doc: dict[str, Any], points_vehicle: np.ndarray) -> np.ndarray:
    """WoodScape's documented projection of vehicle-frame points (N, 3) to pixels (N, 2)."""
    rotation = matrix_from_xyzw(doc["extrinsic"]["quaternion"])
    cam = (points_vehicle - np.asarray(doc["extrinsic"]["translation"])) @ rotation  # R^T (p - t)
    chi = np.hypot(cam[:, 0], cam[:, 1])
    theta = np.pi / 2 - np.arctan2(cam[:, 2], chi)
    intr = doc["intrinsic"]
    rho = sum(intr[f"k{i}"] * theta**i for i in range(1, 5))
    lens = rho[:, None] * cam[:, :2] / chi[:, None]
    centre = np.array([intr["width"] / 2 + intr["cx_offset"] - 0.5, intr["height"] / 2 + intr["cy_offset"] - 0.5])
    return lens * np.array([1.0, intr["aspect_ratio"]]) + centre


def ground_points(camera: Camera, count: int = 400, seed: int = 0) -> np.ndarray:
    """Ground points (N, 2) the camera sees, well inside its image."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-12, 12, size=(count * 20, 2))
    uv, seen = camera.pixel_from_ground(xy)
    h, w = camera.image_size_hw
    inside = seen & (uv[:, 0] > 20) & (uv[:, 0] < w - 20) & (uv[:, 1] > 20) & (uv[:, 1] < h - 20)
    return xy[inside][:count]


@pytest.fixture
def ws_files(tmp_path: Path) -> list[Path]:
    paths = []
    for name, position, yaw, pitch in WS_CAMERAS:
        path = tmp_path / f"00000_{name}.json"
        path.write_text(json.dumps(ws_document(name, position, yaw, pitch, aspect=1.0 if name != "MVR" else 1.02)))
        paths.append(path)
    return paths


def test_woodscape_cameras_project_as_the_format_documents(ws_files: list[Path]) -> None:
    rig = import_woodscape_json(ws_files).rig
    assert rig.camera_names == ("front", "rear", "left", "right")
    for path, cam in zip(ws_files, rig.cameras, strict=True):
        doc = json.loads(path.read_text())
        xy = ground_points(cam)
        assert len(xy) > 100
        ours, _ = cam.pixel_from_ground(xy)
        theirs = woodscape_pixels(doc, np.concatenate([xy, np.zeros((len(xy), 1))], axis=1))
        assert np.abs(ours - theirs).max() < 1e-6, (cam.name, np.abs(ours - theirs).max())
    assert rig.ego.contains(np.array([[1.4, 0.0]]))[0], "the ego box spans the cameras, about the car's middle"


def test_woodscape_through_the_cli_and_a_bev(ws_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ws.yaml"
    assert main(["calib", "import", "woodscape-json", *map(str, ws_files), "--out", str(out), "--cell-size-m", "0.1"]) == 0
    assert "front, rear, left, right" in capsys.readouterr().out
    tables = build_ground_tables(import_woodscape_json(ws_files, cell_size_m=0.1).rig)
    assert (tables.owner >= 0).mean() > 0.8, "the four fisheyes see most of the 20 m grid"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d["intrinsic"].update(model="polynomial"), "radial_poly"),
        (lambda d: d["extrinsic"].update(quaternion=[0.0, 0.0, 0.0, 2.0]), "unit quaternion"),
        (lambda d: d["intrinsic"].pop("k3"), "intrinsic.k3"),
        (lambda d: d["intrinsic"].update(width=1280.5), "whole numbers"),
        (lambda d: d["intrinsic"].update(aspect_ratio=0.0), "aspect_ratio"),
    ],
)
def test_a_broken_woodscape_file_names_the_camera_and_field(change: Any, words: str, tmp_path: Path) -> None:
    doc = ws_document(*WS_CAMERAS[0])
    change(doc)
    path = tmp_path / "00000_FV.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CalibrationError) as caught:
        import_woodscape_json([path])
    assert "front" in str(caught.value) and words in str(caught.value), str(caught.value)


# -- CameraInfo ------------------------------------------------------------------------------------

CI_K = [[420.0, 0.0, 639.2], [0.0, 421.0, 481.3], [0.0, 0.0, 1.0]]
CI_MODELS = {
    "front": ("plumb_bob", [-0.28, 0.07, 0.0008, -0.0004, 0.0]),
    "rear": ("rational_polynomial", [-0.25, 0.05, 0.0002, 0.0003, -0.004, 0.0, 0.0, 0.0]),
    "left": ("equidistant", [-0.02, 0.003, -0.0005, 2e-05]),
    "right": ("equidistant", [0.01, -0.004, 0.0008, -6e-05]),
}
CI_MOUNTS = {
    "front": ((2.3, 0.0, 0.8), 0.0, 30.0),
    "rear": ((-2.3, 0.0, 0.9), 180.0, 35.0),
    "left": ((0.9, 0.98, 1.05), 90.0, 60.0),
    "right": ((0.9, -0.98, 1.05), -90.0, 60.0),
}


def camera_info(name: str, message_form: bool = False) -> dict[str, Any]:
    model, d = CI_MODELS[name]
    k = [v for row in CI_K for v in row]
    if message_form:  # sensor_msgs/CameraInfo's own field names
        return {"width": 1280, "height": 960, "K": k, "D": d, "distortion_model": model, "camera_name": name}
    return {
        "image_width": 1280,
        "image_height": 960,
        "camera_name": name,
        "camera_matrix": {"rows": 3, "cols": 3, "data": k},
        "distortion_model": model,
        "distortion_coefficients": {"rows": 1, "cols": len(d), "data": d},
        "rectification_matrix": {"rows": 3, "cols": 3, "data": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
        "projection_matrix": {"rows": 3, "cols": 4, "data": [420.0, 0, 639.2, 0, 0, 421.0, 481.3, 0, 0, 0, 1, 0]},
    }


@pytest.fixture
def ci_files(tmp_path: Path) -> tuple[list[Path], Path]:
    paths = []
    for i, name in enumerate(CI_MODELS):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(camera_info(name, message_form=i % 2 == 1)))
        paths.append(path)
    poses = {n: {"vehicle_from_camera": {"matrix": vehicle_from_camera_mount(*m).tolist()}} for n, m in CI_MOUNTS.items()}
    poses_path = tmp_path / "poses.yaml"
    poses_path.write_text(yaml.safe_dump(poses))
    return paths, poses_path


def opencv_pixels(name: str, points_vehicle: np.ndarray) -> np.ndarray:
    model, d = CI_MODELS[name]
    camera_from_vehicle = np.linalg.inv(vehicle_from_camera_mount(*CI_MOUNTS[name]))
    rvec, _ = cv2.Rodrigues(camera_from_vehicle[:3, :3])
    tvec = camera_from_vehicle[:3, 3]
    k = np.asarray(CI_K)
    if model == "equidistant":
        out, _ = cv2.fisheye.projectPoints(points_vehicle[:, None, :], rvec, tvec, k, np.asarray(d))
    else:
        out, _ = cv2.projectPoints(points_vehicle, rvec, tvec, k, np.asarray(d))
    return np.asarray(out).reshape(-1, 2)


def test_camera_info_cameras_project_as_opencv_does(ci_files: tuple[list[Path], Path]) -> None:
    paths, poses = ci_files
    rig = import_camera_info(paths, poses).rig
    kinds = {c.name: type(c.model).__name__ for c in rig.cameras}
    assert kinds == {"front": "PinholeCamera", "rear": "PinholeCamera", "left": "FisheyeCamera", "right": "FisheyeCamera"}
    for cam in rig.cameras:
        xy = ground_points(cam, seed=1)
        # OpenCV's projections take rays in front of the camera only (a fisheye's beyond 90 degrees they fold).
        assert cam.vehicle_from_camera is not None
        ahead = (np.concatenate([xy, np.zeros((len(xy), 1))], axis=1) - cam.centre) @ cam.vehicle_from_camera[:3, 2] > 0.2
        xy = xy[ahead]
        assert len(xy) > 100, cam.name
        ours, _ = cam.pixel_from_ground(xy)
        theirs = opencv_pixels(cam.name, np.concatenate([xy, np.zeros((len(xy), 1))], axis=1))
        assert np.abs(ours - theirs).max() < 1e-6, (cam.name, np.abs(ours - theirs).max())


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.update(distortion_model="fov"), "unknown distortion_model"),
        (lambda d: d["distortion_coefficients"].update(data=[-0.25, 0.05, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0]), "k4, k5, k6"),
        (lambda d: d.pop("camera_matrix"), "camera_matrix"),
        (lambda d: d.update(image_width=0), "image_width"),
    ],
)
def test_a_broken_camera_info_names_the_camera(change: Any, words: str, ci_files: tuple[list[Path], Path]) -> None:
    paths, poses = ci_files
    info = camera_info("rear")
    change(info)
    paths[1].write_text(yaml.safe_dump(info))
    with pytest.raises(CalibrationError) as caught:
        import_camera_info(paths, poses)
    assert "rear" in str(caught.value) and words in str(caught.value), str(caught.value)


def test_camera_info_needs_a_pose_per_camera(ci_files: tuple[list[Path], Path], tmp_path: Path) -> None:
    paths, poses = ci_files
    data = yaml.safe_load(poses.read_text())
    del data["left"]
    poses.write_text(yaml.safe_dump(data))
    with pytest.raises(CalibrationError, match="poses file"):
        import_camera_info(paths, poses)
    out = tmp_path / "ci.yaml"
    data["left"] = {"vehicle_from_camera": {"matrix": vehicle_from_camera_mount(*CI_MOUNTS["left"]).tolist()}}
    poses.write_text(yaml.safe_dump(data))
    assert main(["calib", "import", "camera-info", *map(str, paths), "--poses", str(poses), "--out", str(out)]) == 0
