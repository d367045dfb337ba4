"""The rig file: YAML, validated with pydantic, compiled to a ``geometry.rig.Rig``.

Every problem becomes a ``CalibrationError`` naming the camera and the field.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import cv2
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bev_service.errors import CalibrationError, FrameError
from bev_service.geometry import cameras as cm
from bev_service.geometry.grid import BevGrid, EgoBox
from bev_service.geometry.rig import Camera, GroundHomography, Rig
from bev_service.geometry.transforms import check_rotation, rigid, rotation_from_quaternion
from bev_service.imageio import DEFAULT_MAX_PIXELS, decode_mask_png, encode_mask_png

# Physical ranges: every number of a rig file is finite and within what a vehicle rig can mean, so a
# typo (or a hostile 1e308) is a CalibrationError naming the field, never an overflow further on.
MAX_RIG_CAMERAS = 64  # the file format's ceiling; a service caps lower (BEV_MAX_CAMERAS)
MAX_IMAGE_SIDE_PX = 16384
Metres = Annotated[float, Field(ge=-1000.0, le=1000.0)]  # positions, grid and ego ranges
Pixels = Annotated[float, Field(ge=-1e5, le=1e5)]  # principal points, image centres
FocalPixels = Annotated[float, Field(gt=0.0, le=1e6)]
Coefficient = Annotated[float, Field(ge=-1e3, le=1e3)]  # distortion, xi, affine terms, matrix entries
PolyCoefficient = Annotated[float, Field(ge=-1e9, le=1e9)]  # rho(theta) in pixels, ascending powers
Entry = Annotated[float, Field(ge=-1e9, le=1e9)]  # homography entries (scale-free)
ImageSide = Annotated[int, Field(gt=0, le=MAX_IMAGE_SIDE_PX)]
Range = tuple[Metres, Metres]
Matrix3 = tuple[tuple[Entry, Entry, Entry], tuple[Entry, Entry, Entry], tuple[Entry, Entry, Entry]]
Row4 = tuple[Coefficient, Coefficient, Coefficient, Coefficient]

# A camera's mask: at most the pixels the service decodes of one image (a PNG mask beyond it could not
# be read back), so a few bytes of polygons cannot ask for gigabytes.
MAX_MASK_PIXELS = DEFAULT_MAX_PIXELS

# A rig file's YAML: at most this deep and this many values (a 64-camera rig is ~3,000); beyond, it is refused
# while it is read, before anything is built from it.
MAX_YAML_DEPTH = 16
MAX_YAML_NODES = 20_000


class StrictModel(BaseModel):
    """A file schema that refuses unknown keys and non-finite numbers: a typo or a NaN is an error, not a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FisheyeModel(StrictModel):
    type: Literal["fisheye"]
    fx: FocalPixels
    fy: FocalPixels
    cx: Pixels
    cy: Pixels
    k: tuple[Coefficient, Coefficient, Coefficient, Coefficient] = Field(description="Kannala-Brandt k1..k4 (OpenCV fisheye)")
    max_angle_deg: float | None = Field(default=None, gt=0, le=180)


class PinholeModel(StrictModel):
    type: Literal["pinhole"]
    fx: FocalPixels
    fy: FocalPixels
    cx: Pixels
    cy: Pixels
    dist: list[Coefficient] = Field(default_factory=list, max_length=5, description="OpenCV k1, k2, p1, p2[, k3]")


class MeiModel(StrictModel):
    type: Literal["mei"]
    fx: FocalPixels
    fy: FocalPixels
    cx: Pixels
    cy: Pixels
    xi: float = Field(ge=0, le=1e3)
    dist: list[Coefficient] = Field(default_factory=list, max_length=5, description="k1, k2, p1, p2[, k3]")


class OcamModel(StrictModel):
    type: Literal["ocam"]
    inverse_poly: list[PolyCoefficient] = Field(min_length=2, max_length=16, description="rho(theta), ascending powers")
    center_xy: tuple[Pixels, Pixels]
    affine_cde: tuple[Coefficient, Coefficient, Coefficient] = (1.0, 0.0, 0.0)
    max_angle_deg: float | None = Field(default=None, gt=0, le=180)


ModelSpec = Annotated[FisheyeModel | PinholeModel | MeiModel | OcamModel, Field(discriminator="type")]


class PoseSpec(StrictModel):
    """``matrix`` (4x4), or ``quaternion_wxyz`` with ``translation_m``."""

    matrix: tuple[Row4, Row4, Row4, Row4] | None = None
    quaternion_wxyz: tuple[Coefficient, Coefficient, Coefficient, Coefficient] | None = None
    translation_m: tuple[Metres, Metres, Metres] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> PoseSpec:
        if (self.matrix is None) == (self.quaternion_wxyz is None or self.translation_m is None):
            raise ValueError("give either 'matrix' (4x4) or both 'quaternion_wxyz' and 'translation_m'")
        return self


class HomographySpec(StrictModel):
    ground_from_image: Matrix3 = Field(description="undistorted image pixels to vehicle ground (x, y) in metres")
    undistorted_k: Matrix3 = Field(description="intrinsic matrix of the undistorted image")


Polygon = Annotated[list[tuple[Pixels, Pixels]], Field(min_length=3, max_length=1000)]


class MaskSpec(StrictModel):
    """The pixels of a camera that see the world, in one of three forms: ``png`` (a file beside the rig
    file: non-zero pixels see), ``png_base64`` (the same PNG inline: what a stored rig holds) or
    ``masked_polygons`` (pixel polygons (u, v) of what does not see: the car's body, the dark border)."""

    png: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    png_base64: str | None = Field(default=None, max_length=1 << 20)
    masked_polygons: list[Polygon] | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_form(self) -> MaskSpec:
        if sum(v is not None for v in (self.png, self.png_base64, self.masked_polygons)) != 1:
            raise ValueError("give exactly one of 'png', 'png_base64' and 'masked_polygons'")
        return self


class CameraSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    image_size_hw: tuple[ImageSide, ImageSide]
    model: ModelSpec
    vehicle_from_camera: PoseSpec | None = None
    ground_homography: HomographySpec | None = None
    mask: MaskSpec | None = None

    @model_validator(mode="after")
    def _one_tie(self) -> CameraSpec:
        if (self.vehicle_from_camera is None) == (self.ground_homography is None):
            raise ValueError("give exactly one of 'vehicle_from_camera' and 'ground_homography'")
        return self


MAX_GRID_CELLS = 2048 * 2048


class GridSpec(StrictModel):
    x_range_m: Range
    y_range_m: Range
    cell_size_m: float = Field(ge=0.001, le=100.0)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) the grid will have, known before anything is built (at most 2,000,000 each)."""
        (x0, x1), (y0, y1) = self.x_range_m, self.y_range_m
        return max(0, round((x1 - x0) / self.cell_size_m)), max(0, round((y1 - y0) / self.cell_size_m))


class EgoSpec(StrictModel):
    x_range_m: Range
    y_range_m: Range
    height_m: float | None = Field(default=None, gt=0, le=10, description="the body's height: it hides the ground behind it")


class VehicleFrameSpec(StrictModel):
    origin: str = Field(default="centre of the vehicle footprint on the ground", max_length=500)


class RigSpec(StrictModel):
    rig_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = Field(default="1", max_length=64)
    description: str = Field(default="", max_length=10_000)
    vehicle_frame: VehicleFrameSpec = VehicleFrameSpec()
    grid: GridSpec
    ego: EgoSpec
    cameras: list[CameraSpec] = Field(min_length=1, max_length=MAX_RIG_CAMERAS)


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


def _mask(spec: MaskSpec, camera: str, size_hw: tuple[int, int], base_dir: Path | None) -> np.ndarray:
    """The (h, w) bool mask a ``MaskSpec`` describes; CalibrationError naming the camera for a missing or
    unreadable file, another size, or a mask that hides every pixel."""
    h, w = size_hw
    if h * w > MAX_MASK_PIXELS:
        raise CalibrationError(f"a mask of {w}x{h} pixels; at most {MAX_MASK_PIXELS} pixels", camera=camera, field="mask")
    if spec.masked_polygons is not None:
        hidden = np.zeros((h, w), np.uint8)
        cv2.fillPoly(hidden, [np.round(np.asarray(poly, np.float64)).astype(np.int32) for poly in spec.masked_polygons], 1)
        mask = hidden == 0
    else:
        if spec.png is not None:
            if base_dir is None:
                raise CalibrationError(
                    "a mask file needs a rig file on disk; send it inline as png_base64", camera=camera, field="mask.png"
                )
            try:
                data = (base_dir / spec.png).read_bytes()
            except OSError as exc:
                raise CalibrationError(
                    f"cannot read mask file {spec.png}: {exc.strerror}", camera=camera, field="mask.png"
                ) from exc
        else:
            assert spec.png_base64 is not None
            try:
                data = base64.b64decode(spec.png_base64, validate=True)
            except binascii.Error as exc:
                raise CalibrationError(f"not base64: {exc}", camera=camera, field="mask.png_base64") from exc
        try:
            mask = decode_mask_png(data, name=f"camera {camera!r} mask")
        except FrameError as exc:
            raise CalibrationError(str(exc), camera=camera, field="mask") from exc
    if mask.shape != (h, w):
        raise CalibrationError(f"a {mask.shape[1]}x{mask.shape[0]} mask for a {w}x{h} image", camera=camera, field="mask")
    if not mask.any():
        raise CalibrationError("the mask hides every pixel", camera=camera, field="mask")
    return mask


def _camera(spec: CameraSpec, base_dir: Path | None = None) -> Camera:
    try:
        model = _camera_model(spec)
    except ValueError as exc:
        raise CalibrationError(str(exc), camera=spec.name, field="model") from exc
    mask = _mask(spec.mask, spec.name, spec.image_size_hw, base_dir) if spec.mask is not None else None
    if spec.vehicle_from_camera is not None:
        return Camera(spec.name, model, vehicle_from_camera=_pose(spec.vehicle_from_camera, spec.name), mask=mask)
    assert spec.ground_homography is not None
    try:
        hom = GroundHomography(
            np.asarray(spec.ground_homography.ground_from_image, dtype=np.float64),
            np.asarray(spec.ground_homography.undistorted_k, dtype=np.float64),
        )
    except ValueError as exc:
        raise CalibrationError(str(exc), camera=spec.name, field="ground_homography") from exc
    return Camera(spec.name, model, ground_homography=hom, mask=mask)


def rig_from_spec(spec: RigSpec, source_text: str = "", base_dir: Path | None = None) -> Rig:
    """The rig a validated file describes; ``base_dir`` is where mask files named by it are read from
    (None: the rig came without a folder, as a PUT does, and may hold only inline masks)."""
    try:
        grid = BevGrid(spec.grid.x_range_m, spec.grid.y_range_m, spec.grid.cell_size_m)
    except (ValueError, OverflowError) as exc:
        raise CalibrationError(str(exc), field="grid") from exc
    if grid.rows * grid.cols > MAX_GRID_CELLS:
        # The tables hold a few bytes per cell per camera: a millimetre grid would ask for gigabytes.
        raise CalibrationError(
            f"{grid.rows} x {grid.cols} cells exceeds the limit of {MAX_GRID_CELLS} (2048 x 2048); use larger cells",
            field="grid.cell_size_m",
        )
    try:
        ego = EgoBox(spec.ego.x_range_m, spec.ego.y_range_m, spec.ego.height_m)
    except ValueError as exc:
        raise CalibrationError(str(exc), field="ego") from exc
    names = [c.name for c in spec.cameras]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CalibrationError(
            f"camera names must be unique; {duplicates[0]!r} is used twice", camera=duplicates[0], field="name"
        )
    cameras = tuple(_camera(c, base_dir) for c in spec.cameras)
    rig = Rig(spec.rig_id, spec.version, cameras, grid, ego, spec.vehicle_frame.origin, source_text)
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


def spec_from_dict(data: Any) -> RigSpec:
    try:
        return RigSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        camera, field = _location(data, first["loc"])
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise CalibrationError(f"{first['msg']}{more}", camera=camera, field=field) from exc


def rig_from_dict(data: Any, source_text: str = "") -> Rig:
    return rig_from_spec(spec_from_dict(data), source_text)


# libyaml's C parser where PyYAML was built with it (a 1 MiB file in milliseconds, not seconds).
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_yaml_shape(text: str) -> None:
    """CalibrationError, while reading, for YAML nested deeper than ``MAX_YAML_DEPTH`` or holding more
    than ``MAX_YAML_NODES`` values, counting an alias (``*name``) as the whole subtree it stands for: a
    few kilobytes of nested aliases would otherwise unfold into gigabytes. Iterative: no recursion to run
    out of, and a huge document stops at its first node over the limit."""
    nodes = 0
    anchored: dict[str, tuple[int, int]] = {}  # anchor: (nodes, depth) of its subtree
    open_: list[list[Any]] = []  # per open collection: [anchor, nodes at its start, its deepest level below]
    try:
        for event in yaml.parse(text, Loader=_Loader):
            below = 0
            if isinstance(event, yaml.AliasEvent):
                size, below = anchored.get(event.anchor or "", (1, 0))
                nodes += size
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                if event.anchor:
                    anchored[event.anchor] = (1, 0)
            elif isinstance(event, yaml.CollectionStartEvent):
                nodes += 1
                open_.append([event.anchor, nodes - 1, 0])
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, began, deepest = open_.pop()
                if anchor:
                    anchored[anchor] = (nodes - began, deepest + 1)
                below = deepest + 1
            if open_:
                open_[-1][2] = max(open_[-1][2], below)
            if len(open_) + below > MAX_YAML_DEPTH:  # the levels open now, and those an ended or aliased subtree had
                raise CalibrationError(f"nested more than {MAX_YAML_DEPTH} levels deep; a rig file is not that deep")
            if nodes > MAX_YAML_NODES:
                raise CalibrationError(
                    f"more than {MAX_YAML_NODES} values (aliases counted unfolded); a rig file holds a few thousand"
                )
    except yaml.YAMLError as exc:
        raise CalibrationError(f"not valid YAML: {exc}") from exc


def read_rig_spec(text: str) -> RigSpec:
    """A rig file's text (YAML; JSON is YAML too) to its validated schema, before any geometry is built.
    Every problem is a CalibrationError: bad YAML, too deep or too large (``check_yaml_shape``), a missing
    or out-of-range field."""
    check_yaml_shape(text)
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise CalibrationError(f"not valid YAML: {exc}") from exc
    except (RecursionError, OverflowError, ValueError) as exc:  # a scalar PyYAML's constructors cannot hold
        raise CalibrationError(f"not a usable rig file: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        raise CalibrationError(f"a rig file must be a YAML mapping, got {type(data).__name__}")
    return spec_from_dict(data)


def rig_from_yaml(text: str, base_dir: Path | None = None) -> Rig:
    return rig_from_spec(read_rig_spec(text), text, base_dir)


def load_rig(path: str | Path) -> Rig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(f"cannot read rig file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"cannot read rig file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return rig_from_yaml(text, Path(path).parent)


def spec_from_rig(rig: Rig, description: str = "") -> RigSpec:
    """The file form of a rig. Poses are written as 4x4 matrices: a quaternion would be rebuilt
    into a rotation that differs in the last bits, so saving and loading would change the tables'
    fingerprint (the cache key)."""
    cams = []
    for cam in rig.cameras:
        entry: dict[str, Any] = {"name": cam.name, "image_size_hw": list(cam.image_size_hw), "model": _model_dict(cam.model)}
        if cam.mask is not None:
            entry["mask"] = {"png_base64": base64.b64encode(encode_mask_png(cam.mask)).decode("ascii")}
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
            "ego": {"x_range_m": rig.ego.x_range_m, "y_range_m": rig.ego.y_range_m, "height_m": rig.ego.height_m},
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
