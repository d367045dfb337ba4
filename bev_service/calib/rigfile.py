"""The rig file: YAML, validated with pydantic, compiled to a ``geometry.rig.Rig``.

Every problem becomes a ``CalibrationError`` naming the camera and the field.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from bev_service.errors import CalibrationError
from bev_service.geometry import cameras as cm
from bev_service.geometry.grid import BevGrid, EgoBox
from bev_service.geometry.rig import Camera, GroundHomography, Rig
from bev_service.geometry.transforms import check_rotation, rigid, rotation_from_quaternion

Range = tuple[float, float]
Matrix3 = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]
Row4 = tuple[float, float, float, float]


class StrictModel(BaseModel):
    """A file schema that refuses unknown keys and non-finite numbers: a typo or a NaN is an error, not a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FisheyeModel(StrictModel):
    type: Literal["fisheye"]
    fx: PositiveFloat
    fy: PositiveFloat
    cx: float
    cy: float
    k: tuple[float, float, float, float] = Field(description="Kannala-Brandt k1..k4 (OpenCV fisheye)")
    max_angle_deg: float | None = Field(default=None, gt=0, le=180)


class PinholeModel(StrictModel):
    type: Literal["pinhole"]
    fx: PositiveFloat
    fy: PositiveFloat
    cx: float
    cy: float
    dist: list[float] = Field(default_factory=list, max_length=5, description="OpenCV k1, k2, p1, p2[, k3]")


class MeiModel(StrictModel):
    type: Literal["mei"]
    fx: PositiveFloat
    fy: PositiveFloat
    cx: float
    cy: float
    xi: float = Field(ge=0)
    dist: list[float] = Field(default_factory=list, max_length=5, description="k1, k2, p1, p2[, k3]")


class OcamModel(StrictModel):
    type: Literal["ocam"]
    inverse_poly: list[float] = Field(min_length=2, description="rho(theta), ascending powers")
    center_xy: tuple[float, float]
    affine_cde: tuple[float, float, float] = (1.0, 0.0, 0.0)
    max_angle_deg: float | None = Field(default=None, gt=0, le=180)


ModelSpec = Annotated[FisheyeModel | PinholeModel | MeiModel | OcamModel, Field(discriminator="type")]


class PoseSpec(StrictModel):
    """``matrix`` (4x4), or ``quaternion_wxyz`` with ``translation_m``."""

    matrix: tuple[Row4, Row4, Row4, Row4] | None = None
    quaternion_wxyz: tuple[float, float, float, float] | None = None
    translation_m: tuple[float, float, float] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> PoseSpec:
        if (self.matrix is None) == (self.quaternion_wxyz is None or self.translation_m is None):
            raise ValueError("give either 'matrix' (4x4) or both 'quaternion_wxyz' and 'translation_m'")
        return self


class HomographySpec(StrictModel):
    ground_from_image: Matrix3 = Field(description="undistorted image pixels to vehicle ground (x, y) in metres")
    undistorted_k: Matrix3 = Field(description="intrinsic matrix of the undistorted image")


class CameraSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    image_size_hw: tuple[PositiveInt, PositiveInt]
    model: ModelSpec
    vehicle_from_camera: PoseSpec | None = None
    ground_homography: HomographySpec | None = None

    @model_validator(mode="after")
    def _one_tie(self) -> CameraSpec:
        if (self.vehicle_from_camera is None) == (self.ground_homography is None):
            raise ValueError("give exactly one of 'vehicle_from_camera' and 'ground_homography'")
        return self


MAX_GRID_CELLS = 2048 * 2048


class GridSpec(StrictModel):
    x_range_m: Range
    y_range_m: Range
    cell_size_m: PositiveFloat


class EgoSpec(StrictModel):
    x_range_m: Range
    y_range_m: Range


class VehicleFrameSpec(StrictModel):
    origin: str = "centre of the vehicle footprint on the ground"


class RigSpec(StrictModel):
    rig_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = "1"
    description: str = ""
    vehicle_frame: VehicleFrameSpec = VehicleFrameSpec()
    grid: GridSpec
    ego: EgoSpec
    cameras: list[CameraSpec] = Field(min_length=1)


# --- spec -> geometry -----------------------------------------------------------------------


def _camera_model(spec: CameraSpec) -> cm.CameraModel:
    m = spec.model
    size = spec.image_size_hw
    if isinstance(m, FisheyeModel):
        return cm.FisheyeCamera(cm.Intrinsics(m.fx, m.fy, m.cx, m.cy), size, m.k, m.max_angle_deg)
    if isinstance(m, PinholeModel):
        return cm.PinholeCamera(cm.Intrinsics(m.fx, m.fy, m.cx, m.cy), size, cm.RadTan(*m.dist))
    if isinstance(m, MeiModel):
        return cm.MeiCamera(cm.Intrinsics(m.fx, m.fy, m.cx, m.cy), size, m.xi, cm.RadTan(*m.dist))
    return cm.OcamCamera(size, tuple(m.inverse_poly), m.center_xy, m.affine_cde, m.max_angle_deg)


# A stored quaternion is rounded, never off by more than this from unit norm; a larger error is a
# mistake (a scaled or hand-edited quaternion), not something to normalise away silently.
_QUATERNION_NORM_TOL = 1e-3


def _pose(spec: PoseSpec, camera: str) -> np.ndarray:
    if spec.matrix is not None:
        field = "vehicle_from_camera.matrix"
        m = np.asarray(spec.matrix, dtype=np.float64)
        if not np.allclose(m[3], [0, 0, 0, 1]):
            raise CalibrationError(f"last row must be [0, 0, 0, 1], got {m[3].tolist()}", camera=camera, field=field)
        problem = check_rotation(m[:3, :3])
        if problem:
            raise CalibrationError(problem, camera=camera, field=field)
    else:
        assert spec.quaternion_wxyz is not None and spec.translation_m is not None
        field = "vehicle_from_camera.quaternion_wxyz"
        norm = float(np.linalg.norm(spec.quaternion_wxyz))
        if abs(norm - 1) > _QUATERNION_NORM_TOL:
            raise CalibrationError(f"expected a unit quaternion (w, x, y, z), got norm {norm:.6g}", camera=camera, field=field)
        m = rigid(rotation_from_quaternion(spec.quaternion_wxyz), spec.translation_m)
    if not m[2, 3] > 0:
        raise CalibrationError(
            f"the camera must be above the ground (z > 0 in the vehicle frame), got z = {m[2, 3]:g} m",
            camera=camera,
            field="vehicle_from_camera",
        )
    return m


def _camera(spec: CameraSpec) -> Camera:
    try:
        model = _camera_model(spec)
    except ValueError as exc:
        raise CalibrationError(str(exc), camera=spec.name, field="model") from exc
    if spec.vehicle_from_camera is not None:
        return Camera(spec.name, model, vehicle_from_camera=_pose(spec.vehicle_from_camera, spec.name))
    assert spec.ground_homography is not None
    try:
        hom = GroundHomography(
            np.asarray(spec.ground_homography.ground_from_image, dtype=np.float64),
            np.asarray(spec.ground_homography.undistorted_k, dtype=np.float64),
        )
    except ValueError as exc:
        raise CalibrationError(str(exc), camera=spec.name, field="ground_homography") from exc
    return Camera(spec.name, model, ground_homography=hom)


def rig_from_spec(spec: RigSpec, source_text: str = "") -> Rig:
    try:
        grid = BevGrid(spec.grid.x_range_m, spec.grid.y_range_m, spec.grid.cell_size_m)
    except ValueError as exc:
        raise CalibrationError(str(exc), field="grid") from exc
    if grid.rows * grid.cols > MAX_GRID_CELLS:
        # The tables hold a few bytes per cell per camera: a millimetre grid would ask for gigabytes.
        raise CalibrationError(
            f"{grid.rows} x {grid.cols} cells exceeds the limit of {MAX_GRID_CELLS} (2048 x 2048); use larger cells",
            field="grid.cell_size_m",
        )
    try:
        ego = EgoBox(spec.ego.x_range_m, spec.ego.y_range_m)
    except ValueError as exc:
        raise CalibrationError(str(exc), field="ego") from exc
    names = [c.name for c in spec.cameras]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CalibrationError(
            f"camera names must be unique; {duplicates[0]!r} is used twice", camera=duplicates[0], field="name"
        )
    rig = Rig(
        spec.rig_id, spec.version, tuple(_camera(c) for c in spec.cameras), grid, ego, spec.vehicle_frame.origin, source_text
    )
    check_ground_coverage(rig)
    return rig


def check_ground_coverage(rig: Rig, stride: int = 4) -> None:
    """Raise CalibrationError for a camera that sees no ground cell of the grid (checked on every
    ``stride``-th cell: a camera seeing only a sliver narrower than that is a broken rig anyway)."""
    centres = rig.grid.cell_centres()[::stride, ::stride]
    outside_ego = ~rig.ego.contains(centres)
    for cam in rig.cameras:
        _, seen = cam.pixel_from_ground(centres)
        if not (seen & outside_ego).any():
            field = "ground_homography" if cam.ground_homography is not None else "vehicle_from_camera"
            raise CalibrationError(
                "sees no ground inside the BEV grid (check its pose and the grid ranges)", camera=cam.name, field=field
            )


# --- YAML in and out ------------------------------------------------------------------------


def _location(spec_data: Any, loc: tuple[int | str, ...]) -> tuple[str | None, str]:
    """Turn a pydantic error location into (camera name, dotted field path)."""
    camera = None
    parts = list(loc)
    if len(parts) >= 2 and parts[0] == "cameras" and isinstance(parts[1], int):
        index = parts[1]
        cams = spec_data.get("cameras") if isinstance(spec_data, dict) else None
        entry = cams[index] if isinstance(cams, list) and index < len(cams) else None
        camera = str(entry.get("name")) if isinstance(entry, dict) and entry.get("name") else f"#{index}"
        parts = parts[2:]
    # Drop the discriminator tag pydantic inserts for tagged unions (e.g. model.fisheye.fx).
    if len(parts) >= 2 and parts[0] == "model" and parts[1] in ("fisheye", "pinhole", "mei", "ocam"):
        parts = [parts[0], *parts[2:]]
    return camera, ".".join(str(p) for p in parts) or ("(camera)" if camera else "(root)")


def rig_from_dict(data: Any, source_text: str = "") -> Rig:
    try:
        spec = RigSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        camera, field = _location(data, first["loc"])
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise CalibrationError(f"{first['msg']}{more}", camera=camera, field=field) from exc
    return rig_from_spec(spec, source_text)


def rig_from_yaml(text: str) -> Rig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CalibrationError(f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CalibrationError(f"a rig file must be a YAML mapping, got {type(data).__name__}")
    return rig_from_dict(data, text)


def load_rig(path: str | Path) -> Rig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(f"cannot read rig file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"cannot read rig file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return rig_from_yaml(text)


def spec_from_rig(rig: Rig, description: str = "") -> RigSpec:
    """The file form of a rig. Poses are written as 4x4 matrices: a quaternion would be rebuilt
    into a rotation that differs in the last bits, so saving and loading would change the tables'
    fingerprint (the cache key)."""
    cams = []
    for cam in rig.cameras:
        entry: dict[str, Any] = {"name": cam.name, "image_size_hw": list(cam.image_size_hw), "model": _model_dict(cam.model)}
        if cam.vehicle_from_camera is not None:
            entry["vehicle_from_camera"] = {"matrix": np.asarray(cam.vehicle_from_camera, dtype=np.float64).tolist()}
        else:
            assert cam.ground_homography is not None
            entry["ground_homography"] = {
                "ground_from_image": cam.ground_homography.ground_from_image.tolist(),
                "undistorted_k": cam.ground_homography.undistorted_k.tolist(),
            }
        cams.append(entry)
    return RigSpec.model_validate(
        {
            "rig_id": rig.rig_id,
            "version": rig.version,
            "description": description,
            "vehicle_frame": {"origin": rig.origin_note},
            "grid": {"x_range_m": rig.grid.x_range_m, "y_range_m": rig.grid.y_range_m, "cell_size_m": rig.grid.cell_size_m},
            "ego": {"x_range_m": rig.ego.x_range_m, "y_range_m": rig.ego.y_range_m},
            "cameras": cams,
        }
    )


def _model_dict(model: cm.CameraModel) -> dict[str, Any]:
    if isinstance(model, cm.OcamCamera):
        return {
            "type": "ocam",
            "inverse_poly": list(model.inverse_poly),
            "center_xy": list(model.center_xy),
            "affine_cde": list(model.affine_cde),
            "max_angle_deg": model.max_angle_deg,
        }
    assert isinstance(model, (cm.FisheyeCamera, cm.PinholeCamera, cm.MeiCamera))
    k = model.intrinsics
    base: dict[str, Any] = {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy}
    if isinstance(model, cm.FisheyeCamera):
        return {"type": "fisheye", **base, "k": list(model.k), "max_angle_deg": model.max_angle_deg}
    d = model.distortion
    dist = [d.k1, d.k2, d.p1, d.p2, d.k3]
    if isinstance(model, cm.PinholeCamera):
        return {"type": "pinhole", **base, "dist": dist}
    return {"type": "mei", **base, "xi": model.xi, "dist": dist}


def rig_to_yaml(rig: Rig, description: str = "") -> str:
    data = spec_from_rig(rig, description).model_dump(mode="json", exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)


def save_rig(rig: Rig, path: str | Path, description: str = "") -> None:
    """Write atomically: a reader sees the old file or the whole new one, never a part, and a
    failed write leaves the old file as it was."""
    target = Path(path)
    text = rig_to_yaml(rig, description)
    # mkstemp makes the file private (0600); a rig file keeps the old file's mode, or 0644.
    mode = target.stat().st_mode & 0o777 if target.is_file() else 0o644
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
