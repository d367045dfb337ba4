"""WoodScape calibration JSON (one file per camera) to a rig of posed OCam-form cameras, mapped exactly.

The format (the WoodScape data set's public calibration files)::

    {"name": "FV",
     "extrinsic": {"quaternion": [x, y, z, w], "translation": [x, y, z]},
     "intrinsic": {"model": "radial_poly", "poly_order": 4, "k1": ..., "k2": ..., "k3": ..., "k4": ...,
                   "cx_offset": ..., "cy_offset": ..., "aspect_ratio": 1.0, "width": 1280, "height": 966}}

- Extrinsic: the camera's rotation (quaternion in scipy's ``Rotation.from_quat`` order, x y z w) and
  position in the vehicle frame, ISO 8855 (x forward, y left, z up) with its origin on the ground under
  the rear axle: ``vehicle_from_camera = [R | translation]``, the camera frame z along the optical axis.
- Intrinsic: theta = the angle from the optical axis, rho(theta) = k1 theta + k2 theta^2 + k3 theta^3 +
  k4 theta^4 in pixels; u = cx + rho x / |(x, y)|, v = cy + aspect_ratio rho y / |(x, y)| with
  (cx, cy) = (width / 2 + cx_offset - 0.5, height / 2 + cy_offset - 0.5).

None of Kannala-Brandt (odd powers only) or Mei is that polynomial; the OCam model is, exactly: its
theta' = theta - pi/2, so its ``inverse_poly`` is aspect_ratio * rho(theta' + pi/2) expanded in powers of
theta', its ``center_xy`` is (cx, cy) and its affine part (1 / aspect_ratio, 0, 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bev_service.calib.import_common import (
    DEFAULT_CELL_SIZE_M,
    DEFAULT_HALF_EXTENT_M,
    ImportedRig,
    camera_error,
    checked_matrix,
    posed_rig,
    read_json,
    require,
    rig_id_from,
    validated,
)
from bev_service.errors import CalibrationError
from bev_service.geometry import cameras as cm
from bev_service.geometry.rig import Camera
from bev_service.geometry.transforms import rigid, rotation_from_quaternion

FORMAT = "woodscape-json"
# WoodScape's camera names, as the rig's.
CAMERA_NAMES = {"FV": "front", "RV": "rear", "MVL": "left", "MVR": "right"}
QUATERNION_NORM_TOL = 1e-3


def inverse_poly_from_radial(k: Sequence[float], aspect_ratio: float) -> tuple[float, ...]:
    """OCam's rho(theta') ascending coefficients for WoodScape's rho(theta) = sum k_i theta^i (i = 1..n),
    theta = theta' + pi/2, scaled by ``aspect_ratio`` (binomial expansion: exact)."""
    n = len(k)
    coefficients = np.zeros(n + 1)
    for i, k_i in enumerate(k, start=1):
        for j in range(i + 1):  # (theta' + pi/2)^i = sum_j C(i, j) theta'^j (pi/2)^(i - j)
            coefficients[j] += k_i * math.comb(i, j) * (math.pi / 2) ** (i - j)
    return tuple(float(c) for c in aspect_ratio * coefficients)


def _camera_name(data: dict[str, Any], path: Path) -> str:
    source = str(data.get("name") or path.stem.rpartition("_")[2] or path.stem)
    return CAMERA_NAMES.get(source.upper(), source.lower())


def _number(intrinsic: Any, key: str, camera: str) -> float:
    field = f"intrinsic.{key}"
    return float(checked_matrix(require(intrinsic, key, camera=camera, field=field), (), camera=camera, field=field))


def _camera(path: Path) -> Camera:
    data = read_json(path)
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: expected a JSON object, got {type(data).__name__}")
    name = _camera_name(data, path)
    extrinsic = require(data, "extrinsic", camera=name)
    intrinsic = require(data, "intrinsic", camera=name)
    model = str(require(intrinsic, "model", camera=name, field="intrinsic.model"))
    if model != "radial_poly":
        raise CalibrationError(f"only the radial_poly model is known, got {model!r}", camera=name, field="intrinsic.model")
    k = [_number(intrinsic, f"k{i}", name) for i in range(1, 5)]
    width, height, aspect = (_number(intrinsic, key, name) for key in ("width", "height", "aspect_ratio"))
    if width != int(width) or height != int(height) or width <= 0 or height <= 0:
        raise CalibrationError(
            f"width and height must be positive whole numbers, got {width} x {height}", camera=name, field="intrinsic"
        )
    if not aspect > 0:
        raise CalibrationError(f"must be positive, got {aspect}", camera=name, field="intrinsic.aspect_ratio")
    centre = (width / 2 + _number(intrinsic, "cx_offset", name) - 0.5, height / 2 + _number(intrinsic, "cy_offset", name) - 0.5)
    xyzw = checked_matrix(
        require(extrinsic, "quaternion", camera=name, field="extrinsic.quaternion"),
        (4,),
        camera=name,
        field="extrinsic.quaternion",
    )
    if abs(float(np.linalg.norm(xyzw)) - 1) > QUATERNION_NORM_TOL:
        raise CalibrationError(
            f"expected a unit quaternion (x, y, z, w), got norm {np.linalg.norm(xyzw):.6g}",
            camera=name,
            field="extrinsic.quaternion",
        )
    translation = checked_matrix(
        require(extrinsic, "translation", camera=name, field="extrinsic.translation"),
        (3,),
        camera=name,
        field="extrinsic.translation",
    )
    rotation = rotation_from_quaternion([xyzw[3], xyzw[0], xyzw[1], xyzw[2]])
    try:
        lens = cm.OcamCamera((int(height), int(width)), inverse_poly_from_radial(k, aspect), centre, (1.0 / aspect, 0.0, 0.0))
    except ValueError as exc:
        raise camera_error(exc, camera=name, field="intrinsic") from exc
    return Camera(name, lens, vehicle_from_camera=rigid(rotation, translation))


def import_woodscape_json(
    paths: Sequence[str | Path],
    *,
    rig_id: str | None = None,
    cell_size_m: float = DEFAULT_CELL_SIZE_M,
    half_extent_m: float = DEFAULT_HALF_EXTENT_M,
) -> ImportedRig:
    """One WoodScape calibration JSON per camera to a rig (cameras in the order given)."""
    if not paths:
        raise CalibrationError("give one calibration JSON per camera", field="files")
    cameras = tuple(_camera(Path(p)) for p in paths)
    rig_id = rig_id or rig_id_from(Path(paths[0]).resolve().parent.name, FORMAT)
    rig = posed_rig(rig_id, cameras, "on the ground under the rear axle (WoodScape, ISO 8855)", cell_size_m, half_extent_m)
    description = (
        f"Imported from {', '.join(Path(p).name for p in paths)} ({FORMAT}). vehicle_from_camera = [R(quaternion x y z w) | "
        "translation]; the radial polynomial rho(theta) = k1 theta + .. + k4 theta^4 written exactly as an OCam "
        "inverse polynomial in theta - pi/2, scaled by aspect_ratio, with affine (1 / aspect_ratio, 0, 0) and centre "
        "(width / 2 + cx_offset - 0.5, height / 2 + cy_offset - 0.5). Ego box: the x/y bounding box of the camera "
        f"positions (derived here); grid: {2 * half_extent_m:g} m square about its centre."
    )
    return validated(rig, description)
