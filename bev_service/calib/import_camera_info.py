"""ROS ``sensor_msgs/CameraInfo`` YAML (one per camera) with a pose per camera to a rig, mapped exactly.

Each camera file is what ROS's camera_calibration writes (``image_width``, ``image_height``,
``camera_name``, ``camera_matrix: {data: [fx, 0, cx, 0, fy, cy, 0, 0, 1]}``, ``distortion_model``,
``distortion_coefficients: {data: [...]}``) or the message's own fields (``width``, ``height``, ``K``,
``D``, ``distortion_model``). Distortion models:

- ``equidistant``: OpenCV fisheye, D = [k1, k2, k3, k4] -> the ``fisheye`` (Kannala-Brandt) model;
- ``plumb_bob``: D = [k1, k2, p1, p2, k3] -> ``pinhole``;
- ``rational_polynomial``: D = [k1, k2, p1, p2, k3, k4, k5, k6] -> ``pinhole`` when k4..k6 are zero (the
  pinhole model has no rational part: anything else is refused, never approximated).

CameraInfo holds no pose: the poses file maps each camera name to ``vehicle_from_camera`` in the rig
file's form (``matrix``, or ``quaternion_wxyz`` and ``translation_m``) of the optical frame (z along the
optical axis, x right, y down in the image), in the vehicle frame (x forward, y left, z up, metres).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bev_service.calib.import_common import (
    DEFAULT_CELL_SIZE_M,
    DEFAULT_HALF_EXTENT_M,
    ImportedRig,
    camera_error,
    checked_matrix,
    posed_rig,
    require,
    rig_id_from,
    validated,
)
from bev_service.errors import CalibrationError
from bev_service.geometry import cameras as cm
from bev_service.geometry.rig import Camera
from bev_service.geometry.transforms import check_rotation, rigid, rotation_from_quaternion

FORMAT = "camera-info"


def _read_yaml(path: Path, camera: str | None = None) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CalibrationError(f"cannot read {path}: {exc.strerror}", camera=camera, field="file") from exc
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{path} is not valid YAML: {exc}", camera=camera, field="file") from exc


def _data(info: dict[str, Any], ros_key: str, message_key: str, camera: str) -> Any:
    """A matrix's numbers under the calibration file's name ({data: [...]}) or the message's."""
    value = info.get(ros_key, info.get(message_key))
    if isinstance(value, dict):
        value = value.get("data")
    if value is None:
        raise CalibrationError(f"missing (as {ros_key} or {message_key})", camera=camera, field=ros_key)
    return value


def _model(info: dict[str, Any], camera: str) -> cm.CameraModel:
    width = info.get("image_width", info.get("width"))
    height = info.get("image_height", info.get("height"))
    if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
        raise CalibrationError(
            f"image_width and image_height must be positive integers, got {width} x {height}", camera=camera, field="image_width"
        )
    k = checked_matrix(_data(info, "camera_matrix", "K", camera), (9,), camera=camera, field="camera_matrix").reshape(3, 3)
    if abs(k[0, 1]) > 1e-9 or abs(k[1, 0]) > 1e-9 or abs(k[2, 0]) > 1e-9 or abs(k[2, 1]) > 1e-9 or abs(k[2, 2] - 1) > 1e-9:
        raise CalibrationError("expected [fx, 0, cx, 0, fy, cy, 0, 0, 1] (no skew)", camera=camera, field="camera_matrix")
    intrinsics = cm.Intrinsics(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))
    model = str(require(info, "distortion_model", camera=camera))
    raw = _data(info, "distortion_coefficients", "D", camera)
    count = len(raw) if isinstance(raw, list) else -1
    d = [float(v) for v in checked_matrix(raw, (count,), camera=camera, field="distortion_coefficients")]
    size = (height, width)
    try:
        if model == "equidistant":
            if len(d) != 4:
                raise CalibrationError(
                    f"equidistant takes [k1, k2, k3, k4], got {len(d)} values", camera=camera, field="distortion_coefficients"
                )
            return cm.FisheyeCamera(intrinsics, size, (d[0], d[1], d[2], d[3]))
        if model in ("plumb_bob", "rational_polynomial"):
            if len(d) not in (0, 4, 5, 8, 12, 14) or (model == "plumb_bob" and len(d) > 5):
                raise CalibrationError(f"{model} with {len(d)} coefficients", camera=camera, field="distortion_coefficients")
            if any(abs(v) > 0 for v in d[5:]):
                raise CalibrationError(
                    "rational_polynomial with non-zero k4, k5, k6 (or thin-prism terms): pinhole has k1, k2, p1, p2, k3",
                    camera=camera,
                    field="distortion_coefficients",
                )
            return cm.PinholeCamera(intrinsics, size, cm.RadTan(*(d[:5] + [0.0] * (5 - min(5, len(d))))))
    except ValueError as exc:
        raise camera_error(exc, camera=camera, field="camera_matrix") from exc
    raise CalibrationError(
        f"unknown distortion_model {model!r}: equidistant, plumb_bob or rational_polynomial",
        camera=camera,
        field="distortion_model",
    )


def _pose(spec: Any, camera: str) -> np.ndarray:
    field = "vehicle_from_camera"
    if not isinstance(spec, dict):
        raise CalibrationError("missing from the poses file", camera=camera, field=field)
    if "matrix" in spec:
        m = checked_matrix(spec["matrix"], (4, 4), camera=camera, field=f"{field}.matrix")
        problem = check_rotation(m[:3, :3])
        if problem or not np.allclose(m[3], [0, 0, 0, 1]):
            raise CalibrationError(problem or "last row must be [0, 0, 0, 1]", camera=camera, field=f"{field}.matrix")
        return m
    q = checked_matrix(
        require(spec, "quaternion_wxyz", camera=camera, field=f"{field}.quaternion_wxyz"),
        (4,),
        camera=camera,
        field=f"{field}.quaternion_wxyz",
    )
    if abs(float(np.linalg.norm(q)) - 1) > 1e-3:
        raise CalibrationError(
            f"expected a unit quaternion (w, x, y, z), got norm {np.linalg.norm(q):.6g}",
            camera=camera,
            field=f"{field}.quaternion_wxyz",
        )
    t = checked_matrix(
        require(spec, "translation_m", camera=camera, field=f"{field}.translation_m"),
        (3,),
        camera=camera,
        field=f"{field}.translation_m",
    )
    return rigid(rotation_from_quaternion(q), t)


def import_camera_info(
    paths: Sequence[str | Path],
    poses: str | Path,
    *,
    rig_id: str | None = None,
    cell_size_m: float = DEFAULT_CELL_SIZE_M,
    half_extent_m: float = DEFAULT_HALF_EXTENT_M,
) -> ImportedRig:
    """One CameraInfo YAML per camera and a poses file (camera name -> ``vehicle_from_camera``) to a rig."""
    if not paths:
        raise CalibrationError("give one CameraInfo YAML per camera", field="files")
    pose_map = _read_yaml(Path(poses))
    if not isinstance(pose_map, dict):
        raise CalibrationError(f"{poses}: expected a mapping of camera name to vehicle_from_camera", field="poses")
    cameras = []
    for path in map(Path, paths):
        info = _read_yaml(path)
        if not isinstance(info, dict):
            raise CalibrationError(f"{path}: expected a CameraInfo mapping", field="file")
        name = str(info.get("camera_name") or path.stem)
        entry = pose_map.get(name)
        pose = _pose(entry.get("vehicle_from_camera", entry) if isinstance(entry, dict) else entry, name)
        cameras.append(Camera(name, _model(info, name), vehicle_from_camera=pose))
    rig_id = rig_id or rig_id_from(Path(paths[0]).resolve().parent.name, FORMAT)
    rig = posed_rig(rig_id, tuple(cameras), "the poses file's vehicle frame origin, on the ground", cell_size_m, half_extent_m)
    description = (
        f"Imported from {', '.join(Path(p).name for p in paths)} ({FORMAT}) with poses from {Path(poses).name}: "
        "equidistant as fisheye (Kannala-Brandt), plumb_bob and rational_polynomial (k4..k6 zero) as pinhole. Ego box: "
        f"the x/y bounding box of the camera positions (derived here); grid: {2 * half_extent_m:g} m square about its centre."
    )
    return validated(rig, description)
