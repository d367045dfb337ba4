"""Importer for the OCam JSON calibration of PJLab-ADG/SensorsCalibration (surround-camera/manual_calib).

``intrinsic/<Cam>.json``: ``cam_K`` = [[c, d, xc], [e, 1, yc]] (the affine part and the centre),
``cam_dist`` = the inverse polynomial rho(theta) in ascending powers, ``img_dist_w/h`` the image size.
``extrinsic/<Cam>.json``: a 4x4 from a virtual top-down camera frame to the real camera's OpenCV frame.

The source (``run_avm.cpp``, ``project_on_ground``) renders its BEV through that virtual camera: BEV
pixel (j, i) is the virtual-frame point ((j - 500) 0.004 h, (i - 500) 0.004 h, h), the ground lying at
depth h below the virtual camera, with one h per camera. So the virtual frame is a downward-looking
OpenCV camera: X = BEV image right, Y = BEV image down, Z = down. The numbers say which way forward
is: the front camera sits at negative Y (top of the BEV), the left camera at negative X. Hence

    vehicle x (forward) = -Y, vehicle y (left) = -X, vehicle z (up) = -Z,

with the vehicle origin on the ground below the virtual camera (the BEV centre), per camera:
vehicle_from_camera = vehicle_from_virtual(h) @ inverse(camera_from_virtual).
"""

from __future__ import annotations

from collections.abc import Mapping
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
from bev_service.geometry.cameras import FloatArray, OcamCamera
from bev_service.geometry.grid import BevGrid
from bev_service.geometry.rig import Camera, Rig
from bev_service.geometry.transforms import check_rotation, rigid

# Columns: the virtual camera's X (BEV right), Y (BEV down), Z (down) in the vehicle frame.
VEHICLE_FROM_VIRTUAL_ROTATION = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])

# Depth of the ground below the virtual camera per camera, from the source's run_avm.cpp.
SOURCE_HEIGHTS = {"front": 6.07826, "left": 6.25217, "back": 6.31014, "right": 6.28116}
SOURCE_ORDER = ("front", "left", "back", "right")
SOURCE_PIXEL_PER_DEPTH = 0.004  # the source's BEV pixel is 0.004 h

DEFAULT_CELL_SIZE_M = 0.025  # 0.004 h for h = 6.25, the middle of the source's heights
DEFAULT_CELLS = 1000


def _only_value(data: Any, path: Path, camera: str) -> Any:
    """The source wraps each file's content in one key named after the sensor."""
    if not isinstance(data, dict) or len(data) != 1:
        raise CalibrationError(f"{path}: expected a JSON object with one sensor entry", camera=camera, field="file")
    return next(iter(data.values()))


def _intrinsic(path: Path, camera: str) -> OcamCamera:
    param = require(_only_value(read_json(path, camera=camera), path, camera), "param", camera=camera)
    size_hw = _image_size_hw(param, camera)
    cam_k = require(require(param, "cam_K", camera=camera, field="param.cam_K"), "data", camera=camera, field="param.cam_K.data")
    k = _affine_rows(cam_k, camera)
    dist = require(
        require(param, "cam_dist", camera=camera, field="param.cam_dist"), "data", camera=camera, field="param.cam_dist.data"
    )
    poly = _coefficients(dist, camera)
    try:
        return OcamCamera(size_hw, tuple(poly.tolist()), (k[0, 2], k[1, 2]), (k[0, 0], k[0, 1], k[1, 0]))
    except ValueError as exc:
        raise camera_error(exc, camera=camera, field="param") from exc


def _image_size_hw(param: Any, camera: str) -> tuple[int, int]:
    size = []
    for key in ("img_dist_h", "img_dist_w"):
        field = f"param.{key}"
        value = float(checked_matrix(require(param, key, camera=camera, field=field), (), camera=camera, field=field))
        if not (value > 0 and value == round(value)):
            raise CalibrationError(f"expected a positive whole number of pixels, got {value:g}", camera=camera, field=field)
        size.append(int(value))
    return size[0], size[1]


def _affine_rows(cam_k: Any, camera: str) -> FloatArray:
    """The first two rows [[c, d, xc], [e, 1, yc]] of cam_K (the source stores a third, [0, 0, 1])."""
    field = "param.cam_K.data"
    rows = cam_k[:2] if isinstance(cam_k, list) and len(cam_k) == 3 else cam_k
    k = checked_matrix(rows, (2, 3), camera=camera, field=field)
    if abs(k[1, 1] - 1) > 1e-9:
        raise CalibrationError(f"expected [[c, d, xc], [e, 1, yc]], got {k.tolist()}", camera=camera, field=field)
    return k


def _coefficients(dist: Any, camera: str) -> FloatArray:
    field = "param.cam_dist.data"
    try:
        poly = np.asarray(dist, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"expected a list of numbers: {exc}", camera=camera, field=field) from exc
    if poly.size < 2 or not np.isfinite(poly).all():
        raise CalibrationError(f"expected at least 2 finite coefficients, got {poly.size}", camera=camera, field=field)
    return poly


def _extrinsic(path: Path, camera: str) -> FloatArray:
    param = require(_only_value(read_json(path, camera=camera), path, camera), "param", camera=camera)
    calib = require(param, "sensor_calib", camera=camera, field="param.sensor_calib")
    matrix = checked_matrix(
        require(calib, "data", camera=camera, field="param.sensor_calib.data"),
        (4, 4),
        camera=camera,
        field="param.sensor_calib.data",
    )
    problem = check_rotation(matrix[:3, :3])
    if problem or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise CalibrationError(problem or "last row must be [0, 0, 0, 1]", camera=camera, field="param.sensor_calib.data")
    return matrix


def vehicle_from_camera(camera_from_virtual: FloatArray, ground_depth: float) -> FloatArray:
    """Pose in the vehicle frame whose origin is the ground point below the virtual camera."""
    vehicle_from_virtual = rigid(VEHICLE_FROM_VIRTUAL_ROTATION, -VEHICLE_FROM_VIRTUAL_ROTATION @ [0.0, 0.0, ground_depth])
    return vehicle_from_virtual @ np.linalg.inv(camera_from_virtual)


def _camera_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """camera name (lower case) -> (intrinsic file, extrinsic file), in the source's order."""
    found: dict[str, tuple[Path, Path]] = {}
    intrinsic_dir, extrinsic_dir = folder / "intrinsic", folder / "extrinsic"
    if not intrinsic_dir.is_dir() or not extrinsic_dir.is_dir():
        raise CalibrationError(f"{folder} must hold intrinsic/ and extrinsic/ folders of <Camera>.json files")
    extrinsics = {p.stem.lower(): p for p in extrinsic_dir.glob("*.json")}
    for intrinsic in sorted(intrinsic_dir.glob("*.json")):
        name = intrinsic.stem.lower()
        if name not in extrinsics:
            raise CalibrationError(f"no extrinsic/{intrinsic.stem}.json beside {intrinsic}", camera=name, field="extrinsic")
        found[name] = (intrinsic, extrinsics[name])
    if not found:
        raise CalibrationError(f"no <Camera>.json files in {intrinsic_dir}")
    order = [n for n in SOURCE_ORDER if n in found] + sorted(n for n in found if n not in SOURCE_ORDER)
    return {n: found[n] for n in order}


def check_layout(cameras: Mapping[str, FloatArray]) -> None:
    """Front ahead of back, left left of right: a wrong guess of the virtual frame's axes fails here."""
    pairs = (("front", "back", 0, "ahead of"), ("left", "right", 1, "to the left of"))
    for first, second, axis, words in pairs:
        if first in cameras and second in cameras and not cameras[first][axis, 3] > cameras[second][axis, 3]:
            raise CalibrationError(
                f"is not {words} camera {second!r}: the extrinsics do not match the source's virtual BEV frame",
                camera=first,
                field="extrinsic",
            )


def _heights(names: list[str], overrides: Mapping[str, float] | None) -> dict[str, float]:
    heights = {**SOURCE_HEIGHTS, **{k.lower(): float(v) for k, v in (overrides or {}).items()}}
    unknown = sorted(set(overrides or {}) - set(names), key=str)
    if unknown:
        raise CalibrationError(f"heights given for unknown cameras {unknown}; cameras: {names}", field="height")
    for name in names:
        if name not in heights:
            raise CalibrationError("no ground depth below the virtual camera known for it: give one", camera=name, field="height")
        if not (np.isfinite(heights[name]) and heights[name] > 0):
            raise CalibrationError(f"must be a positive depth, got {heights[name]}", camera=name, field="height")
    return {name: heights[name] for name in names}


def _grid(cell_size_m: float, cells: int) -> BevGrid:
    if not (cell_size_m > 0 and cells > 0):
        raise CalibrationError(f"need a positive cell size and cell count, got {cell_size_m} m and {cells}", field="grid")
    half = cell_size_m * cells / 2
    return BevGrid((-half, half), (-half, half), cell_size_m)


def import_ocam_json(
    folder: str | Path,
    *,
    heights_m: Mapping[str, float] | None = None,
    cell_size_m: float = DEFAULT_CELL_SIZE_M,
    cells: int = DEFAULT_CELLS,
    rig_id: str | None = None,
) -> ImportedRig:
    """Read ``intrinsic/`` and ``extrinsic/`` OCam JSON files into a posed OCam rig on a cells x cells grid
    centred on the source's BEV centre; ``heights_m`` overrides the ground depth below the virtual camera."""
    root = Path(folder)
    files = _camera_files(root)
    heights = _heights(list(files), heights_m)
    models = {name: _intrinsic(intrinsic, name) for name, (intrinsic, _) in files.items()}
    poses = {name: vehicle_from_camera(_extrinsic(extrinsic, name), heights[name]) for name, (_, extrinsic) in files.items()}
    check_layout(poses)
    cameras = tuple(Camera(name, models[name], vehicle_from_camera=poses[name]) for name in files)
    rig = Rig(
        rig_id or rig_id_from(root.resolve().name, "ocam-json"),
        "1",
        cameras,
        _grid(cell_size_m, cells),
        ego_from_camera_positions([pose[:2, 3] for pose in poses.values()]),
        origin_note="ground point below the source's virtual top-down camera (the centre of its BEV image)",
    )
    depths = ", ".join(f"{name} {h:g}" for name, h in heights.items())
    pixel_sizes = [SOURCE_PIXEL_PER_DEPTH * h for h in heights.values()]
    description = (
        f"Imported from {root.name}/intrinsic and extrinsic (ocam-json): OCam intrinsics; extrinsics from the "
        "source's virtual top-down camera (x forward = -Y, y left = -X, z up = -Z of that camera), "
        f"the ground at depth {depths} below it. "
        "The source's units are taken as metres. "
        f"Grid {cells} x {cells} at {cell_size_m:g} m around the origin (the source renders at 0.004 h per pixel: "
        f"{min(pixel_sizes):.4f} to {max(pixel_sizes):.4f}). Ego box: the x/y bounding box of the camera positions "
        "(derived here; the files give no footprint)."
    )
    return validated(rig, description)
