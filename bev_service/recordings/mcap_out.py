"""MCAP out: camera recordings (what ``bev synth --drive --mcap`` writes) and BEV results (what ``bev replay`` writes).

BEV results, per frame set at its time (log and publish time alike):
  /bev/grid              foxglove.Grid (JSON): class id and red, green, blue, alpha per cell (layout: ``gridmsg``)
  /bev/occupancy         nav_msgs/msg/OccupancyGrid (CDR): ground 0, obstacles, background and ego 100, unknown -1
                         (``gridmsg``)
and once, at the first frame set's time:
  /tf                    foxglove.FrameTransform (JSON): vehicle_from_camera of each posed camera
  /<camera>/calibration  foxglove.CameraCalibration (JSON)
  /<camera>/camera_info  sensor_msgs/msg/CameraInfo (CDR; distortion_model equidistant for Kannala-Brandt cameras)
Grids are in the frame ``vehicle``; camera ``c`` is the frame ``c_optical_frame`` (OpenCV optical axes). The
metadata record ``bev`` holds the rig's id and fingerprint, the BEV picture's grid metadata (``grid``, its rows and
columns as ``bev_service.geometry.grid`` lays them out), the class table, ``message_layout`` (how both messages lay
that picture out: message[j, i] = bev[rows - 1 - i, cols - 1 - j], origin (x_min, y_min)) and ``occupancy_values``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

import numpy as np
from numpy.typing import NDArray

from bev_service.calib.exchange import VEHICLE_FRAME_ID, camera_frame_id, vehicle_from_camera
from bev_service.classes import class_table
from bev_service.geometry.grid import cells_along_axes
from bev_service.geometry.rig import Rig
from bev_service.recordings import foxglove, gridmsg, ros

log = logging.getLogger(__name__)

GRID_TOPIC = "/bev/grid"
OCCUPANCY_TOPIC = "/bev/occupancy"
TF_TOPIC = "/tf"
ImageEncoding = Literal["ros2", "json", "protobuf"]
IMAGE_ENCODINGS: tuple[ImageEncoding, ...] = ("ros2", "json", "protobuf")


def image_topic(camera: str) -> str:
    return f"/cam/{camera}/compressed"


def image_raw_topic(camera: str) -> str:
    return f"/cam/{camera}/image_raw"


class _McapFile:
    """An MCAP writer with its channels registered on first use, one schema per message type."""

    def __init__(self, output: str | Path | IO[bytes], *, profile: str = "") -> None:
        from mcap.writer import Writer

        self._file: IO[bytes] | None = open(output, "wb") if isinstance(output, str | Path) else None  # noqa: SIM115
        self.writer = Writer(self._file if self._file is not None else output)  # type: ignore[arg-type]
        self.writer.start(profile=profile, library="bev-service")
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}

    def channel(self, topic: str, schema_name: str, schema_encoding: str, schema: bytes, message_encoding: str) -> int:
        if topic not in self._channels:
            if schema_name not in self._schemas:
                self._schemas[schema_name] = self.writer.register_schema(schema_name, schema_encoding, schema)
            self._channels[topic] = self.writer.register_channel(topic, message_encoding, self._schemas[schema_name])
        return self._channels[topic]

    def json_message(self, topic: str, schema_name: str, time_ns: int, data: bytes) -> None:
        channel = self.channel(
            topic, schema_name, foxglove.JSON_SCHEMA_ENCODING, foxglove.json_schema(schema_name), foxglove.JSON_MESSAGE_ENCODING
        )
        self.writer.add_message(channel, log_time=time_ns, data=data, publish_time=time_ns)

    def ros_message(self, topic: str, message: Any, time_ns: int, log_time_ns: int | None = None) -> None:
        msgtype = message.__msgtype__
        channel = self.channel(topic, msgtype, ros.ROS2_SCHEMA_ENCODING, ros.msgdef(msgtype), ros.CDR_ENCODING)
        log_time = time_ns if log_time_ns is None else log_time_ns
        self.writer.add_message(channel, log_time=log_time, data=ros.serialize(message), publish_time=log_time)

    def close(self) -> None:
        self.writer.finish()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class CameraRecordingWriter(_McapFile):
    """Camera images, one topic per camera (``image_topic``), as ROS 2 or Foxglove (JSON, protobuf) CompressedImage;
    or uncompressed (``write_raw_image``, on ``image_raw_topic``) as ROS 2 Image or Foxglove RawImage (JSON)."""

    def __init__(self, output: str | Path | IO[bytes], *, encoding: ImageEncoding = "ros2") -> None:
        if encoding not in IMAGE_ENCODINGS:
            raise ValueError(f"image encoding must be one of {', '.join(IMAGE_ENCODINGS)}, got {encoding!r}")
        # The MCAP "ros2" profile (every channel ROS 2 CDR) is what ROS 2 tools, rosbags among them, look for.
        super().__init__(output, profile="ros2" if encoding == "ros2" else "")
        self.encoding = encoding

    def write_image(
        self,
        camera: str,
        capture_time_ns: int,
        data: bytes,
        image_format: str = "jpeg",
        *,
        log_time_ns: int | None = None,
        topic: str | None = None,
    ) -> None:
        topic = topic or image_topic(camera)
        frame_id, log_time = camera_frame_id(camera), capture_time_ns if log_time_ns is None else log_time_ns
        if self.encoding == "ros2":
            self.ros_message(
                topic, ros.compressed_image(capture_time_ns, frame_id, data, image_format), capture_time_ns, log_time
            )
            return
        if self.encoding == "json":
            payload = foxglove.compressed_image_json(capture_time_ns, frame_id, data, image_format)
            schema, schema_encoding = foxglove.json_schema(foxglove.COMPRESSED_IMAGE), foxglove.JSON_SCHEMA_ENCODING
        else:
            payload = foxglove.compressed_image_protobuf(capture_time_ns, frame_id, data, image_format)
            schema, schema_encoding = foxglove.compressed_image_descriptor_set(), foxglove.PROTOBUF_ENCODING
        message_encoding = foxglove.JSON_MESSAGE_ENCODING if self.encoding == "json" else foxglove.PROTOBUF_ENCODING
        channel = self.channel(topic, foxglove.COMPRESSED_IMAGE, schema_encoding, schema, message_encoding)
        self.writer.add_message(channel, log_time=log_time, data=payload, publish_time=log_time)

    def write_raw_image(
        self,
        camera: str,
        capture_time_ns: int,
        pixels: NDArray[np.uint8],
        encoding: str = "rgb8",
        *,
        log_time_ns: int | None = None,
        topic: str | None = None,
    ) -> None:
        """An uncompressed image (``pixels`` as ``encoding`` lays them out) as ``sensor_msgs/msg/Image`` (ros2) or
        ``foxglove.RawImage`` (json), on the camera's ``image_raw_topic``."""
        if self.encoding == "protobuf":
            raise ValueError("raw images are written as ros2 or json")
        topic = topic or image_raw_topic(camera)
        frame_id, log_time = camera_frame_id(camera), capture_time_ns if log_time_ns is None else log_time_ns
        if self.encoding == "ros2":
            self.ros_message(topic, ros.raw_image(capture_time_ns, frame_id, pixels, encoding), capture_time_ns, log_time)
            return
        payload = foxglove.raw_image_json(capture_time_ns, frame_id, pixels, encoding)
        schema = foxglove.json_schema(foxglove.RAW_IMAGE)
        channel = self.channel(topic, foxglove.RAW_IMAGE, foxglove.JSON_SCHEMA_ENCODING, schema, foxglove.JSON_MESSAGE_ENCODING)
        self.writer.add_message(channel, log_time=log_time, data=payload, publish_time=log_time)


class BevMcapWriter(_McapFile):
    """BEV grids of one rig as ``foxglove.Grid`` and ``nav_msgs/msg/OccupancyGrid``, with the rig's transforms and
    calibrations (see the module docstring)."""

    def __init__(self, output: str | Path | IO[bytes], rig: Rig, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(output)
        self.rig = rig
        self._origin = rig.grid.rear_right_corner_m
        self._rig_written = False
        self.writer.add_metadata(
            "bev",
            {
                "rig_id": rig.rig_id,
                "rig_fingerprint": rig.fingerprint,
                "grid": json.dumps(rig.grid.metadata()),
                "classes": json.dumps(class_table()),
                "message_layout": json.dumps(gridmsg.message_layout(rig.grid, VEHICLE_FRAME_ID)),
                "occupancy_values": json.dumps(gridmsg.occupancy_values()),
                **(metadata or {}),
            },
        )

    def write_grid(self, time_ns: int, bev: NDArray[np.uint8]) -> None:
        if bev.shape != self.rig.grid.shape:
            raise ValueError(f"grid of shape {bev.shape}, the rig's is {self.rig.grid.shape}")
        if not self._rig_written:
            self._write_rig(time_ns)
        cell = self.rig.grid.cell_size_m
        grid = foxglove.grid_json(time_ns, VEHICLE_FRAME_ID, self._origin, cell, gridmsg.coloured_cells(bev))
        self.json_message(GRID_TOPIC, foxglove.GRID, time_ns, grid)
        values = cells_along_axes(gridmsg.occupancy_from_bev(bev))
        self.ros_message(
            OCCUPANCY_TOPIC, ros.occupancy_grid(time_ns, VEHICLE_FRAME_ID, self.rig.grid, self._origin, values), time_ns
        )

    def _write_rig(self, time_ns: int) -> None:
        for cam in self.rig.cameras:
            frame_id = camera_frame_id(cam.name)
            tf = foxglove.frame_transform_json(time_ns, VEHICLE_FRAME_ID, frame_id, vehicle_from_camera(cam))
            self.json_message(TF_TOPIC, foxglove.FRAME_TRANSFORM, time_ns, tf)
            calibration = ros.camera_calibration(cam.model)
            fox = {**calibration, "distortion_model": _foxglove_distortion(calibration["distortion_model"])}
            self.json_message(
                f"/{cam.name}/calibration",
                foxglove.CAMERA_CALIBRATION,
                time_ns,
                foxglove.camera_calibration_json(time_ns, frame_id, fox),
            )
            self.ros_message(f"/{cam.name}/camera_info", ros.camera_info(time_ns, frame_id, calibration), time_ns)
        self._rig_written = True


def _foxglove_distortion(ros_model: str) -> str:
    # Foxglove names OpenCV's fisheye (Kannala-Brandt) model kannala_brandt; ROS names it equidistant.
    return "kannala_brandt" if ros_model == "equidistant" else ros_model
