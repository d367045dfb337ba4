"""Importer for the K / D / T_camera_from_ground JSON ("kdt-json"), e.g. the calibration transcribed
from PJLab-ADG/SensorsCalibration's surround-camera/auto_calib_fisheye.

Per camera: ``K`` (3x3), ``D`` (OpenCV fisheye k1..k4) and ``T_camera_from_ground`` (4x4, ground-frame
points to the OpenCV camera frame). ``ground_axes`` says which way the ground frame's x, y, z point
(right/left/forward/back/up/down), ``units_m`` how many metres one file unit is (null: unknown),
``grid`` the BEV grid in the vehicle frame (x forward, y left) in file units, ``image_size_wh`` the
image size (optionally per camera). The vehicle frame's origin is the ground frame's origin:

    vehicle_from_camera = vehicle_from_ground @ inverse(T_camera_from_ground), translations * units_m
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bev_service.calib.import_common import (
    ImportedRig,
    camera_error,
    checked_matrix,
    ego_from_camera_positions,
    read_json,
    require,
    rig_id_from,
    validated,
)
from bev_service.errors import CalibrationError
from bev_service.geometry.cameras import FisheyeCamera, FloatArray, Intrinsics
from bev_service.geometry.grid import BevGrid
from bev_service.geometry.rig import Camera, Rig
from bev_service.geometry.transforms import check_rotation

FORMAT = "kdt-json"

# Each direction name as a unit vector of the vehicle frame (ISO 8855: x forward, y left, z up).
VEHICLE_AXIS = {
    "forward": (1.0, 0.0, 0.0),
    "back": (-1.0, 0.0, 0.0),
    "left": (0.0, 1.0, 0.0),
    "right": (0.0, -1.0, 0.0),
    "up": (0.0, 0.0, 1.0),
    "down": (0.0, 0.0, -1.0),
}


def vehicle_from_ground_rotation(ground_axes: Any) -> FloatArray:
    """3x3 rotation whose columns are the ground frame's x, y, z axes written in the vehicle frame."""
    if not isinstance(ground_axes, dict):
        raise CalibrationError("expected a mapping {x: ..., y: ..., z: ...} of direction names", field="ground_axes")
    columns = []
    for axis in ("x", "y", "z"):
        direction = ground_axes.get(axis)
        if direction not in VEHICLE_AXIS:
            raise CalibrationError(
                f"axis {axis!r} is {direction!r}; expected one of {', '.join(VEHICLE_AXIS)}", field=f"ground_axes.{axis}"
            )
        columns.append(VEHICLE_AXIS[direction])
    rotation = np.array(columns, dtype=np.float64).T
    if abs(abs(np.linalg.det(rotation)) - 1) > 1e-9:
        raise CalibrationError(f"axes {ground_axes} do not span three dimensions (a direction is repeated)", field="ground_axes")
    return rotation


def vehicle_from_camera(
    vehicle_from_ground: FloatArray, t_camera_from_ground: FloatArray, units_m: float, *, camera: str
) -> FloatArray:
    """The camera's pose in the vehicle frame, in metres; checks that it is a proper rigid motion."""
    if not np.allclose(t_camera_from_ground[3], [0, 0, 0, 1]):
        raise CalibrationError(
            f"last row must be [0, 0, 0, 1], got {t_camera_from_ground[3].tolist()}", camera=camera, field="T_camera_from_ground"
        )
    # Orthonormal up to handedness here (a left-handed ground frame makes det -1); handedness is
    # checked on the composed pose below, against ground_axes.
    problem = check_rotation(t_camera_from_ground[:3, :3] * np.sign(np.linalg.det(t_camera_from_ground[:3, :3])))
    if problem:
        raise CalibrationError(problem, camera=camera, field="T_camera_from_ground")
    ground_from_camera = np.linalg.inv(t_camera_from_ground)
    pose = np.eye(4)
    pose[:3, :3] = vehicle_from_ground @ ground_from_camera[:3, :3]
    pose[:3, 3] = vehicle_from_ground @ ground_from_camera[:3, 3] * units_m
    if np.linalg.det(pose[:3, :3]) < 0:
        raise CalibrationError(
            "the camera comes out mirrored: T_camera_from_ground and ground_axes disagree about the ground frame's handedness",
            camera=camera,
            field="ground_axes",
        )
    return pose


def _units(data: dict[str, Any], override: float | None) -> tuple[float, str]:
    """(metres per file unit, what to say about it in the description)."""
    if override is not None:
        if not (np.isfinite(override) and override > 0):
            raise CalibrationError(f"must be a positive number, got {override}", field="units_m")
        return float(override), f"{override:g} m per file unit (--units-m)"
    value = data.get("units_m")
    if value is None:
        return 1.0, (
            "the file's own units (units_m is null and no --units-m was given): every length in this rig "
            "(poses, grid, ego box) is in those units, labelled metres"
        )
    if not isinstance(value, (int, float)) or not value > 0:
        raise CalibrationError(f"must be a positive number or null, got {value!r}", field="units_m")
    return float(value), f"{value:g} m per file unit (units_m in the file)"


def _grid(data: dict[str, Any], units_m: float) -> BevGrid:
    grid = require(data, "grid", camera=None)
    x_range = checked_matrix(require(grid, "x_range", camera=None, field="grid.x_range"), (2,), camera=None, field="grid.x_range")
    y_range = checked_matrix(require(grid, "y_range", camera=None, field="grid.y_range"), (2,), camera=None, field="grid.y_range")
    cell = checked_matrix(
        require(grid, "cell_size", camera=None, field="grid.cell_size"), (), camera=None, field="grid.cell_size"
    )
    try:
        return BevGrid(
            (float(x_range[0] * units_m), float(x_range[1] * units_m)),
            (float(y_range[0] * units_m), float(y_range[1] * units_m)),
            float(cell * units_m),
        )
    except ValueError as exc:
        raise CalibrationError(str(exc), field="grid") from exc


def _image_size_hw(entry: dict[str, Any], data: dict[str, Any], name: str) -> tuple[int, int]:
    raw = entry.get("image_size_wh", data.get("image_size_wh"))
    size = checked_matrix(raw, (2,), camera=name, field="image_size_wh")
    if not (size > 0).all() or not np.allclose(size, np.round(size)):
        raise CalibrationError(
            f"expected positive whole (width, height), got {size.tolist()}", camera=name, field="image_size_wh"
        )
    return int(size[1]), int(size[0])


def _camera(name: str, entry: Any, data: dict[str, Any], vehicle_from_ground: FloatArray, units_m: float) -> Camera:
    k = checked_matrix(require(entry, "K", camera=name), (3, 3), camera=name, field="K")
    d = checked_matrix(require(entry, "D", camera=name), (4,), camera=name, field="D")
    t = checked_matrix(require(entry, "T_camera_from_ground", camera=name), (4, 4), camera=name, field="T_camera_from_ground")
    try:
        model = FisheyeCamera(
            Intrinsics(k[0, 0], k[1, 1], k[0, 2], k[1, 2]),
            _image_size_hw(entry, data, name),
            (float(d[0]), float(d[1]), float(d[2]), float(d[3])),
        )
    except ValueError as exc:
        raise camera_error(exc, camera=name, field="K") from exc
    return Camera(name, model, vehicle_from_camera=vehicle_from_camera(vehicle_from_ground, t, units_m, camera=name))


def import_kdt_json(path: str | Path, *, units_m: float | None = None, rig_id: str | None = None) -> ImportedRig:
    """Read a kdt-json calibration into a posed fisheye rig; ``units_m`` overrides the file's ``units_m``."""
    source = Path(path)
    data = read_json(source)
    if not isinstance(data, dict):
        raise CalibrationError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if data.get("format", FORMAT) != FORMAT:
        raise CalibrationError(f"expected {FORMAT!r}, got {data.get('format')!r}", field="format")
    metres_per_unit, units_note = _units(data, units_m)
    vehicle_from_ground = vehicle_from_ground_rotation(require(data, "ground_axes", camera=None))
    entries = require(data, "cameras", camera=None)
    if not isinstance(entries, dict) or not entries:
        raise CalibrationError("expected a non-empty mapping of camera name to calibration", field="cameras")
    cameras = tuple(_camera(str(name), entry, data, vehicle_from_ground, metres_per_unit) for name, entry in entries.items())
    positions = [cam.vehicle_from_camera[:2, 3] for cam in cameras if cam.vehicle_from_camera is not None]
    axes = data["ground_axes"]
    rig = Rig(
        rig_id or rig_id_from(source.parent.resolve().name, "kdt-json"),
        "1",
        cameras,
        _grid(data, metres_per_unit),
        ego_from_camera_positions(positions),
        origin_note="origin of the calibration's ground frame (the source's BEV centre), on the ground",
    )
    description = (
        f"Imported from {source.name} (kdt-json). Ground axes x {axes['x']}, y {axes['y']}, z {axes['z']}; "
        f"vehicle_from_camera = vehicle_from_ground @ inverse(T_camera_from_ground). Units: {units_note}. "
        "Grid from the file's grid. Ego box: the x/y bounding box of the camera positions (derived here; "
        "the file gives no footprint)."
    )
    return validated(rig, description)
