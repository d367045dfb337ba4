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

from bev_service.calib.exchange import VEHICLE_FRAME_ID, calibration_of, camera_frame_id, vehicle_from_camera
from bev_service.classes import rgba_palette
from bev_service.geometry.grid import BevGrid, cells_along_axes
from bev_service.geometry.rig import Camera
from bev_service.geometry.transforms import quaternion_from_rotation
from bev_service.imageio import format_from_magic

GRID_FIELDS = ("class_id", "red", "green", "blue", "alpha")  # one uint8 each, in this order
# Foxglove's CompressedImage formats for what the service decodes (imageio.IMAGE_FORMATS).
IMAGE_FORMATS = {"JPEG": "jpeg", "PNG": "png"}


RGBA = rgba_palette()


def timestamp(seconds: float) -> Timestamp:
    return Timestamp.from_epoch_secs(seconds)


def grid_message(bev: NDArray[np.uint8], grid: BevGrid, stamp_s: float) -> Grid:
    """The grid as a ``foxglove.Grid`` in frame ``vehicle``: fields class_id, red, green, blue, alpha (uint8)."""
    if bev.shape != grid.shape:
        raise ValueError(f"expected a grid of shape {grid.shape}, got {bev.shape}")
    cells = cells_along_axes(bev)  # (cols, rows): row j along +y, column i along +x
    packed = np.empty((*cells.shape, len(GRID_FIELDS)), dtype=np.uint8)  # (cols, rows, 5)
    packed[..., 0] = cells
    packed[..., 1:] = RGBA[cells]
    uint8 = PackedElementFieldNumericType.Uint8
    return Grid(
        timestamp=timestamp(stamp_s),
        frame_id=VEHICLE_FRAME_ID,
        pose=Pose(
            position=Vector3(x=grid.rear_right_corner_m[0], y=grid.rear_right_corner_m[1], z=0.0),
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


def calibration_message(camera: Camera, stamp_s: float) -> CameraCalibration:
    """The camera's ``foxglove.CameraCalibration`` at its calibrated image size (``calibration_of``)."""
    calib = calibration_of(camera.model)
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
