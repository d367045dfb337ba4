"""Foxglove message schemas (https://docs.foxglove.dev/docs/visualization/message-schemas) in their JSON encoding,
and ``foxglove.CompressedImage`` in its protobuf encoding.

JSON encoding as Foxglove defines it: the schema is a JSON Schema (MCAP schema encoding ``jsonschema``), the message
is JSON, ``bytes`` fields are base64 strings and times are ``{"sec", "nsec"}``. The protobuf schema is the
``FileDescriptorSet`` of ``foxglove/CompressedImage.proto`` (with ``google/protobuf/timestamp.proto``), built here
from its field numbers so that no generated code is needed.
"""

from __future__ import annotations

import base64
import json
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bev_service.geometry.transforms import quaternion_from_rotation

JSON_SCHEMA_ENCODING = "jsonschema"
JSON_MESSAGE_ENCODING = "json"
PROTOBUF_ENCODING = "protobuf"

COMPRESSED_IMAGE = "foxglove.CompressedImage"
RAW_IMAGE = "foxglove.RawImage"
GRID = "foxglove.Grid"
FRAME_TRANSFORM = "foxglove.FrameTransform"
CAMERA_CALIBRATION = "foxglove.CameraCalibration"

# foxglove.PackedElementField.NumericType
UINT8 = 1

_TIME = {
    "type": "object",
    "properties": {"sec": {"type": "integer", "minimum": 0}, "nsec": {"type": "integer", "minimum": 0, "maximum": 999999999}},
}
_VECTOR2 = {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}}
_VECTOR3 = {"type": "object", "properties": {k: {"type": "number"} for k in "xyz"}}
_QUATERNION = {"type": "object", "properties": {k: {"type": "number"} for k in "xyzw"}}
_POSE = {"type": "object", "properties": {"position": _VECTOR3, "orientation": _QUATERNION}}
_NUMBERS = {"type": "array", "items": {"type": "number"}}
_BYTES = {"type": "string", "contentEncoding": "base64"}

_SCHEMAS: dict[str, dict[str, Any]] = {
    COMPRESSED_IMAGE: {
        "timestamp": _TIME,
        "frame_id": {"type": "string"},
        "data": _BYTES,
        "format": {"type": "string"},
    },
    RAW_IMAGE: {
        "timestamp": _TIME,
        "frame_id": {"type": "string"},
        "width": {"type": "integer", "minimum": 0},
        "height": {"type": "integer", "minimum": 0},
        "encoding": {"type": "string"},
        "step": {"type": "integer", "minimum": 0},
        "data": _BYTES,
    },
    GRID: {
        "timestamp": _TIME,
        "frame_id": {"type": "string"},
        "pose": _POSE,
        "column_count": {"type": "integer", "minimum": 0},
        "cell_size": _VECTOR2,
        "row_stride": {"type": "integer", "minimum": 0},
        "cell_stride": {"type": "integer", "minimum": 0},
        "fields": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "offset": {"type": "integer"}, "type": {"type": "integer"}},
            },
        },
        "data": _BYTES,
    },
    FRAME_TRANSFORM: {
        "timestamp": _TIME,
        "parent_frame_id": {"type": "string"},
        "child_frame_id": {"type": "string"},
        "translation": _VECTOR3,
        "rotation": _QUATERNION,
    },
    CAMERA_CALIBRATION: {
        "timestamp": _TIME,
        "frame_id": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "distortion_model": {"type": "string"},
        "D": _NUMBERS,
        "K": _NUMBERS,
        "R": _NUMBERS,
        "P": _NUMBERS,
    },
}


def json_schema(name: str) -> bytes:
    """The JSON Schema of a Foxglove message type, as an MCAP schema's data."""
    schema = {"title": name, "type": "object", "properties": _SCHEMAS[name]}
    return json.dumps(schema, separators=(",", ":")).encode()


def time_json(time_ns: int) -> dict[str, int]:
    sec, nsec = divmod(int(time_ns), 1_000_000_000)
    return {"sec": sec, "nsec": nsec}


def time_ns_from_json(value: Any) -> int:
    if not isinstance(value, dict):
        return 0
    return int(value.get("sec", 0)) * 1_000_000_000 + int(value.get("nsec", 0))


def encode_json(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def compressed_image_json(time_ns: int, frame_id: str, data: bytes, image_format: str) -> bytes:
    return encode_json(
        {"timestamp": time_json(time_ns), "frame_id": frame_id, "data": base64.b64encode(data).decode(), "format": image_format}
    )


def raw_image_json(time_ns: int, frame_id: str, pixels: NDArray[np.uint8], encoding: str) -> bytes:
    """``pixels`` (height, width[, channels]) uint8, rows unpadded, as a ``foxglove.RawImage`` of ``encoding``."""
    height, width = pixels.shape[:2]
    return encode_json(
        {
            "timestamp": time_json(time_ns),
            "frame_id": frame_id,
            "width": int(width),
            "height": int(height),
            "encoding": encoding,
            "step": int(pixels[0].nbytes),
            "data": base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode(),
        }
    )


# Per cell: the class id (or 254 ego, 255 unknown) and its colour. Fields named red, green, blue and alpha colour a
# grid in Foxglove (foxglove.Grid's schema: "optional for customizing the grid's color").
GRID_FIELDS = ("class_id", "red", "green", "blue", "alpha")


def grid_json(
    time_ns: int, frame_id: str, origin_xy_m: tuple[float, float], cell_size_m: float, cells: NDArray[np.uint8]
) -> bytes:
    """A ``foxglove.Grid`` of ``cells`` (rows along the grid's y, columns along its x, fields last: (h, w, n) uint8),
    its corner at ``origin_xy_m`` with the frame's own axes. The field names are the layout's ``GRID_FIELDS``."""
    _, width, stride = cells.shape
    fields = [{"name": name, "offset": i, "type": UINT8} for i, name in enumerate(GRID_FIELDS)]
    assert stride == len(GRID_FIELDS)
    return encode_json(
        {
            "timestamp": time_json(time_ns),
            "frame_id": frame_id,
            "pose": {
                "position": {"x": origin_xy_m[0], "y": origin_xy_m[1], "z": 0.0},
                "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0},
            },
            "column_count": width,
            "cell_size": {"x": cell_size_m, "y": cell_size_m},
            "row_stride": width * stride,
            "cell_stride": stride,
            "fields": fields,
            "data": base64.b64encode(np.ascontiguousarray(cells).tobytes()).decode(),
        }
    )


def frame_transform_json(time_ns: int, parent: str, child: str, parent_from_child: NDArray[np.float64]) -> bytes:
    w, x, y, z = (float(v) for v in quaternion_from_rotation(parent_from_child[:3, :3]))
    tx, ty, tz = (float(v) for v in parent_from_child[:3, 3])
    return encode_json(
        {
            "timestamp": time_json(time_ns),
            "parent_frame_id": parent,
            "child_frame_id": child,
            "translation": {"x": tx, "y": ty, "z": tz},
            "rotation": {"x": x, "y": y, "z": z, "w": w},
        }
    )


def camera_calibration_json(time_ns: int, frame_id: str, calibration: dict[str, Any]) -> bytes:
    """``calibration``: width, height, distortion_model, D, K, R, P (``ros.camera_calibration``)."""
    return encode_json({"timestamp": time_json(time_ns), "frame_id": frame_id, **calibration})


# --- protobuf ------------------------------------------------------------------------------------


@cache
def compressed_image_descriptor_set() -> bytes:
    """The serialized FileDescriptorSet of ``foxglove.CompressedImage`` (field numbers of Foxglove's .proto)."""
    from google.protobuf import descriptor_pb2, timestamp_pb2

    proto = descriptor_pb2.FileDescriptorProto(
        name="foxglove/CompressedImage.proto", package="foxglove", syntax="proto3", dependency=["google/protobuf/timestamp.proto"]
    )
    message = proto.message_type.add(name="CompressedImage")
    field = descriptor_pb2.FieldDescriptorProto
    for name, number, kind, type_name in (
        ("timestamp", 1, field.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
        ("frame_id", 4, field.TYPE_STRING, None),
        ("data", 2, field.TYPE_BYTES, None),
        ("format", 3, field.TYPE_STRING, None),
    ):
        entry = message.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
        if type_name:
            entry.type_name = type_name
    files = descriptor_pb2.FileDescriptorSet()
    timestamp = files.file.add()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    files.file.append(proto)
    return bytes(files.SerializeToString())


@cache
def protobuf_message_class(schema_name: str, descriptor_set: bytes) -> Any:
    """The message class of ``schema_name`` in a serialized FileDescriptorSet (an MCAP protobuf schema's data)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(schema_name))


def compressed_image_protobuf(time_ns: int, frame_id: str, data: bytes, image_format: str) -> bytes:
    cls = protobuf_message_class(COMPRESSED_IMAGE, compressed_image_descriptor_set())
    message = cls(frame_id=frame_id, data=data, format=image_format)
    message.timestamp.seconds, message.timestamp.nanos = divmod(int(time_ns), 1_000_000_000)
    return bytes(message.SerializeToString())
