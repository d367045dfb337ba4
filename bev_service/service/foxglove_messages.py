"""The service's grid, cameras and rig as Foxglove messages (``foxglove.Grid``, ``CompressedImage``,
``FrameTransforms``, ``CameraCalibration``); pure conversions, no server (that is ``foxglove.py``).

The BEV grid reads as a top-down picture: row 0 forward-most (largest x), column 0 left-most (largest
y). A ``foxglove.Grid`` instead runs its columns along +x and its rows along +y of its pose, from the
cell at the pose. So the message is the picture turned: with ``rows, cols = bev.shape``, message cell
(row j, column i) covers x = x_min + (i + 1/2) s, y = y_min + (j + 1/2) s, which is
``bev[rows - 1 - i, cols - 1 - j]``, and the pose is (x_min, y_min, 0) in frame ``vehicle`` with no
rotation. Every cell carries its class id and the class table's colour; unknown cells are transparent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from foxglove.messages import (
    CameraCalibration,
    CompressedImage,
    FrameTransform,
    Grid,
    PackedElementField,
    PackedElementFieldNumericType,
    Pose,
    Quaternion,
    Timestamp,
    Vector2,
    Vector3,
)
from numpy.typing import NDArray

from bev_service.classes import palette
from bev_service.geometry.cameras import FisheyeCamera, PinholeCamera
from bev_service.geometry.grid import UNKNOWN, BevGrid
from bev_service.geometry.rig import Camera
from bev_service.geometry.transforms import invert_rigid, quaternion_from_rotation, rigid
from bev_service.imageio import format_from_magic

log = logging.getLogger(__name__)

VEHICLE_FRAME_ID = "vehicle"
GRID_FIELDS = ("class_id", "red", "green", "blue", "alpha")  # one uint8 each, in this order
# Foxglove's CompressedImage formats for what the service decodes (imageio.IMAGE_FORMATS).
IMAGE_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
KB_FIT_SAMPLES = 256


def rgba_table() -> NDArray[np.uint8]:
    """(256, 4) RGBA by grid value: the class palette, opaque; unknown cells transparent (alpha 0)."""
    table = np.full((256, 4), 255, dtype=np.uint8)
    table[:, :3] = palette()
    table[UNKNOWN, 3] = 0
    return table


RGBA = rgba_table()


def camera_frame_id(name: str) -> str:
    """The Foxglove frame of a camera (OpenCV optical axes: x right, y down, z forward)."""
    return f"camera_{name}"


def timestamp(seconds: float) -> Timestamp:
    return Timestamp.from_epoch_secs(seconds)


def grid_cells(bev: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The picture-convention grid (rows, cols) as a ``foxglove.Grid``'s cells (cols, rows): message[j, i] =
    bev[rows - 1 - i, cols - 1 - j] (module docstring)."""
    return np.ascontiguousarray(bev[::-1, ::-1].T)  # (cols, rows): row j along +y, column i along +x


def grid_message(bev: NDArray[np.uint8], grid: BevGrid, stamp_s: float) -> Grid:
    """The grid as a ``foxglove.Grid`` in frame ``vehicle``: fields class_id, red, green, blue, alpha (uint8)."""
    if bev.shape != grid.shape:
        raise ValueError(f"expected a grid of shape {grid.shape}, got {bev.shape}")
    cells = grid_cells(bev)
    packed = np.empty((*cells.shape, len(GRID_FIELDS)), dtype=np.uint8)  # (cols, rows, 5)
    packed[..., 0] = cells
    packed[..., 1:] = RGBA[cells]
    uint8 = PackedElementFieldNumericType.Uint8
    return Grid(
        timestamp=timestamp(stamp_s),
        frame_id=VEHICLE_FRAME_ID,
        pose=Pose(
            position=Vector3(x=grid.x_range_m[0], y=grid.y_range_m[0], z=0.0),
            orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0),
        ),
        column_count=cells.shape[1],
        cell_size=Vector2(x=grid.cell_size_m, y=grid.cell_size_m),
        row_stride=cells.shape[1] * len(GRID_FIELDS),
        cell_stride=len(GRID_FIELDS),
        fields=[PackedElementField(name=name, offset=i, type=uint8) for i, name in enumerate(GRID_FIELDS)],
        data=packed.tobytes(),
    )


def image_message(name: str, data: bytes, stamp_s: float) -> CompressedImage | None:
    """A camera's image as received (the encoded bytes, not re-encoded); None for a format Foxglove is not told of."""
    fmt = IMAGE_FORMATS.get(format_from_magic(data) or "")
    if fmt is None:
        return None
    return CompressedImage(timestamp=timestamp(stamp_s), frame_id=camera_frame_id(name), data=data, format=fmt)


def vehicle_from_camera(camera: Camera) -> NDArray[np.float64]:
    """The camera's pose in the vehicle frame: given, or out of its ground homography (camera_from_ground =
    s [r1 r2 t], the ground plane being the vehicle frame's z = 0)."""
    if camera.vehicle_from_camera is not None:
        return np.asarray(camera.vehicle_from_camera, dtype=np.float64)
    assert camera.ground_homography is not None
    m = camera.ground_homography.camera_from_ground
    scale = (np.linalg.norm(m[:, 0]) + np.linalg.norm(m[:, 1])) / 2
    r1, r2, t = m[:, 0] / scale, m[:, 1] / scale, m[:, 2] / scale
    u, _, vt = np.linalg.svd(np.column_stack([r1, r2, np.cross(r1, r2)]))  # the nearest rotation
    return invert_rigid(rigid(u @ vt, t))


def frame_transform(camera: Camera, stamp_s: float) -> FrameTransform:
    """vehicle_from_camera as a Foxglove transform (parent ``vehicle``, child the camera's frame)."""
    pose = vehicle_from_camera(camera)
    w, x, y, z = quaternion_from_rotation(pose[:3, :3])
    tx, ty, tz = pose[:3, 3]
    return FrameTransform(
        timestamp=timestamp(stamp_s),
        parent_frame_id=VEHICLE_FRAME_ID,
        child_frame_id=camera_frame_id(camera.name),
        translation=Vector3(x=float(tx), y=float(ty), z=float(tz)),
        rotation=Quaternion(x=float(x), y=float(y), z=float(z), w=float(w)),
    )


@dataclass(frozen=True)
class Calibration:
    """A camera's intrinsics as Foxglove takes them: ``distortion_model`` with its ``d``, and k (3x3)."""

    distortion_model: str
    d: tuple[float, ...]
    k: NDArray[np.float64]
    fitted: bool = False  # a Kannala-Brandt fit of a model Foxglove does not know (Mei, OCam)


def calibration_of(camera: Camera) -> Calibration:
    """Pinhole: ``plumb_bob`` (k1, k2, p1, p2, k3, exact). Kannala-Brandt: ``kannala_brandt`` (k1..k4, exact).
    Mei and OCam, which Foxglove lacks: ``kannala_brandt`` fitted to the model's own projection."""
    model = camera.model
    if isinstance(model, PinholeCamera):
        d = model.distortion
        return Calibration("plumb_bob", (d.k1, d.k2, d.p1, d.p2, d.k3), model.intrinsics.matrix)
    if isinstance(model, FisheyeCamera):
        return Calibration("kannala_brandt", tuple(float(v) for v in model.k), model.intrinsics.matrix)
    return fit_kannala_brandt(camera)


def fit_kannala_brandt(camera: Camera) -> Calibration:
    """Kannala-Brandt intrinsics (fx, fy, cx, cy, k1..k4) that best reproduce the camera's projection (least
    squares on theta_d over rays along the image axes, up to where they leave the image)."""
    model = camera.model
    h, w = camera.image_size_hw
    (centre,), _ = model.project(np.array([[0.0, 0.0, 1.0]]))
    theta = np.linspace(0.0, np.pi * 0.95, KB_FIT_SAMPLES)[1:]
    theta_d, focal = [], []
    for axis in (0, 1):
        rays = np.zeros((len(theta), 3))
        rays[:, axis], rays[:, 2] = np.sin(theta), np.cos(theta)
        uv, valid = model.project(rays)
        radius = uv[:, axis] - centre[axis]
        inside = valid & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        inside &= np.cumprod(inside).astype(bool)  # up to where the ray first leaves the image
        f = radius[0] / theta[0]  # the slope on the optical axis: Kannala-Brandt's focal length
        focal.append(f)
        theta_d.append((theta[inside], radius[inside] / f))
    t = np.concatenate([a for a, _ in theta_d])
    td = np.concatenate([b for _, b in theta_d])
    k = np.zeros(4)
    if len(t) >= 4:
        basis = np.stack([t**3, t**5, t**7, t**9], axis=1)  # theta_d = theta + k1 theta^3 + ... + k4 theta^9
        k = np.linalg.lstsq(basis, td - t, rcond=None)[0]
        residual_px = float(np.abs(basis @ k - (td - t)).max() * max(focal))
        log.debug("camera %r: Kannala-Brandt fit of %s within %.2f px", camera.name, type(model).__name__, residual_px)
    matrix = np.array([[focal[0], 0.0, centre[0]], [0.0, focal[1], centre[1]], [0.0, 0.0, 1.0]])
    return Calibration("kannala_brandt", tuple(float(v) for v in k), matrix, fitted=True)


def calibration_message(camera: Camera, stamp_s: float) -> CameraCalibration:
    """The camera's ``foxglove.CameraCalibration`` at its calibrated image size (``calibration_of``)."""
    calib = calibration_of(camera)
    h, w = camera.image_size_hw
    k = calib.k
    projection = np.hstack([k, np.zeros((3, 1))])  # P = [K | 0]: the camera is its own rectified frame
    return CameraCalibration(
        timestamp=timestamp(stamp_s),
        frame_id=camera_frame_id(camera.name),
        width=w,
        height=h,
        distortion_model=calib.distortion_model,
        D=list(calib.d),
        K=[float(v) for v in k.ravel()],
        R=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        P=[float(v) for v in projection.ravel()],
    )
