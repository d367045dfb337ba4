"""ROS 2 messages through the ``rosbags`` type store (Humble definitions): CDR bytes and the ``ros2msg`` schema text
MCAP stores beside them, for ``sensor_msgs/msg/CompressedImage``, ``sensor_msgs/msg/Image``,
``nav_msgs/msg/OccupancyGrid`` and ``sensor_msgs/msg/CameraInfo``."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bev_service.calib.exchange import calibration_of
from bev_service.geometry import cameras as cm
from bev_service.geometry.grid import BevGrid

ROS2_SCHEMA_ENCODING = "ros2msg"
CDR_ENCODING = "cdr"

COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
RAW_IMAGE = "sensor_msgs/msg/Image"
OCCUPANCY_GRID = "nav_msgs/msg/OccupancyGrid"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"


@cache
def typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


@cache
def msgdef(msgtype: str) -> bytes:
    """The concatenated message definition of ``msgtype``: an MCAP ``ros2msg`` schema's data."""
    text, _ = typestore().generate_msgdef(msgtype, ros_version=2)
    return str(text).encode()


def _types() -> dict[str, Any]:
    return dict(typestore().types)


def _header(time_ns: int, frame_id: str) -> Any:
    types = _types()
    sec, nanosec = divmod(int(time_ns), 1_000_000_000)
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id)


def serialize(message: Any) -> bytes:
    return bytes(typestore().serialize_cdr(message, message.__msgtype__))


def compressed_image(time_ns: int, frame_id: str, data: bytes, image_format: str) -> Any:
    return _types()[COMPRESSED_IMAGE](
        header=_header(time_ns, frame_id), format=image_format, data=np.frombuffer(data, dtype=np.uint8)
    )


def raw_image(time_ns: int, frame_id: str, pixels: NDArray[np.uint8], encoding: str) -> Any:
    """``pixels`` (height, width[, channels]) uint8, rows unpadded, as a ``sensor_msgs/msg/Image`` of ``encoding``."""
    height, width = pixels.shape[:2]
    return _types()[RAW_IMAGE](
        header=_header(time_ns, frame_id),
        height=int(height),
        width=int(width),
        encoding=encoding,
        is_bigendian=0,
        step=int(pixels[0].nbytes),
        data=np.ascontiguousarray(pixels).reshape(-1),
    )


def occupancy_grid(time_ns: int, frame_id: str, grid: BevGrid, origin_xy_m: tuple[float, float], values: NDArray[np.int8]) -> Any:
    """``values``: (height, width) int8 in message order (``cells_along_axes`` of ``gridmsg.occupancy_from_bev``)."""
    types = _types()
    height, width = values.shape
    stamp = types["builtin_interfaces/msg/Time"](sec=int(time_ns) // 1_000_000_000, nanosec=int(time_ns) % 1_000_000_000)
    origin = types["geometry_msgs/msg/Pose"](
        position=types["geometry_msgs/msg/Point"](x=origin_xy_m[0], y=origin_xy_m[1], z=0.0),
        orientation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
    )
    info = types["nav_msgs/msg/MapMetaData"](
        map_load_time=stamp, resolution=float(grid.cell_size_m), width=width, height=height, origin=origin
    )
    return types[OCCUPANCY_GRID](header=_header(time_ns, frame_id), info=info, data=np.ascontiguousarray(values).ravel())


def camera_calibration(model: cm.CameraModel) -> dict[str, Any]:
    """width, height, distortion_model, D, K, R, P as CameraInfo holds them (``bev_service.calib.exchange``):
    pinhole ``plumb_bob``; Kannala-Brandt ``equidistant`` (D = k1..k4: OpenCV's fisheye); Mei and OCam, which
    CameraInfo cannot describe, ``equidistant`` fitted to their projection."""
    calib = calibration_of(model)
    k = calib.k
    height, width = model.image_size_hw
    return {
        "width": width,
        "height": height,
        "distortion_model": calib.ros_distortion_model,
        "D": list(calib.d),
        "K": [float(v) for v in k.ravel()],
        "R": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "P": [float(v) for v in np.hstack([k, np.zeros((3, 1))]).ravel()],  # P = [K | 0]
    }


def camera_info(time_ns: int, frame_id: str, calibration: dict[str, Any]) -> Any:
    types = _types()
    return types[CAMERA_INFO](
        header=_header(time_ns, frame_id),
        height=calibration["height"],
        width=calibration["width"],
        distortion_model=calibration["distortion_model"],
        d=np.array(calibration["D"], dtype=np.float64),
        k=np.array(calibration["K"], dtype=np.float64),
        r=np.array(calibration["R"], dtype=np.float64),
        p=np.array(calibration["P"], dtype=np.float64),
        binning_x=0,
        binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )
