"""What every route answers, as pydantic models: the OpenAPI document is generated from these.

Field order follows the JSON the service has always sent.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, Field

from bev_service.runtime.pipeline import BevResult
from bev_service.service.rigs import RigEntry


class ErrorBody(BaseModel):
    error: str = Field(description="kind of error: bad_frame, unknown_rig, bad_rig, too_large, unauthorized, overloaded, ...")
    detail: str = Field(description="what was wrong, naming the camera or field")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed request",
        401: "missing or wrong bearer token",
        404: "unknown rig",
        406: "none of the media types in Accept is offered",
        408: "the request body stopped arriving (BEV_TIMEOUT_BODY_S)",
        409: "the rig is read-only, or the rig store is full",
        413: "body or image too large",
        415: "unsupported content type",
        422: "unusable frame set or rig file",
        503: "not ready or overloaded (Retry-After)",
    }.items()
}


def binary(media_type: str, description: str = "Successful Response") -> dict[int | str, dict[str, Any]]:
    """A 200 whose body is bytes of ``media_type`` (FastAPI documents no schema for a bare ``Response``)."""
    return {200: {"description": description, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}


# -- health -------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    uptime_s: float


class Readiness(BaseModel):
    ready: Literal[True] = True


class NotReady(BaseModel):
    ready: Literal[False] = False
    error: Literal["not_ready"] = "not_ready"
    detail: str


# -- model and classes ----------------------------------------------------------------------------------


class ClassInfo(BaseModel):
    id: int
    name: str
    color_rgb: list[int]
    ground: bool
    description: str


class ModelInfo(BaseModel):
    path: str
    file: str
    sha256: str
    backend: str
    quantization: dict[str, Any] | None = Field(description="how an int8 graph was made; null for a float model")
    input_size_hw: list[int] = Field(description="the size the network was trained at")
    input_pixels: int = Field(description="pixels each camera runs at, in its own aspect ratio (BEV_INPUT_PIXELS)")
    default_rig_input_size_wh: dict[str, list[int]] = Field(
        default_factory=dict, description="the default rig's cameras and the size each runs through the network at"
    )
    config: dict[str, Any]


# -- rigs -----------------------------------------------------------------------------------------------


class GridMeta(BaseModel):
    cell_size_m: float
    x_range_m: list[float]
    y_range_m: list[float]
    rows: int
    cols: int
    frame: str
    row_col_convention: str
    unknown_value: int
    ego_value: int


class EgoBox(BaseModel):
    x_range_m: list[float]
    y_range_m: list[float]


class CameraPublic(BaseModel):
    name: str
    model: str = Field(description="camera model class, e.g. FisheyeCamera")
    image_size_wh: list[int]
    input_size_wh: list[int] = Field(description="the size its frames run through the network at")
    position_m: list[float] = Field(description="its optical centre (x, y, z) in the vehicle frame, metres")


class RigSummary(BaseModel):
    id: str
    version: str
    default: bool
    fingerprint: str
    cameras: list[CameraPublic]
    grid: GridMeta
    ego: EgoBox

    @classmethod
    def of(cls, entry: RigEntry, default_id: str) -> RigSummary:
        rig = entry.rig
        cameras = [
            CameraPublic(
                name=c.name,
                model=type(c.model).__name__,
                image_size_wh=[c.image_size_hw[1], c.image_size_hw[0]],
                input_size_wh=[w, h],
                position_m=[round(float(v), 4) for v in c.centre],
            )
            for c, (h, w) in zip(rig.cameras, entry.input_sizes_hw, strict=True)
        ]
        return cls(
            id=rig.rig_id,
            version=rig.version,
            default=rig.rig_id == default_id,
            fingerprint=rig.fingerprint,
            cameras=cameras,
            grid=GridMeta(**rig.grid.metadata()),
            ego=EgoBox(x_range_m=list(rig.ego.x_range_m), y_range_m=list(rig.ego.y_range_m)),
        )


class RigPublic(RigSummary):
    yaml: str = Field(description="the rig file, as stored")


class RigList(BaseModel):
    default: str
    rigs: list[RigSummary]


# -- frame sets -------------------------------------------------------------------------------------------


class GridInfo(GridMeta):
    encoding: Literal["png"] = "png"
    png_base64: str = Field(description="8-bit palette PNG; pixel values are class ids (see /v1/classes)")


class BevReply(BaseModel):
    rig: str
    rig_fingerprint: str
    model: str
    backend: str
    mode: Literal["images", "labels"]
    grid: GridInfo
    timing_ms: dict[str, float]
    device_to_host_bytes: int
    camera_labels: dict[str, str] | None = Field(
        default=None,
        description="with camera_labels=true: per camera, the label map the grid was warped from (base64 palette PNG)",
    )
    input_size_wh: dict[str, list[int]] = Field(
        description="per camera, the size of the map the warp read (the network's input, or the label map's)"
    )

    @classmethod
    def of(
        cls,
        entry: RigEntry,
        result: BevResult,
        model_info: dict[str, Any],
        mode: Literal["images", "labels"],
        camera_labels: dict[str, bytes] | None = None,
    ) -> BevReply:
        assert result.encoded is not None
        png = base64.b64encode(result.encoded).decode("ascii")
        return cls(
            rig=entry.rig_id,
            rig_fingerprint=entry.rig.fingerprint,
            model=model_info.get("file", ""),
            backend=model_info.get("backend", ""),
            mode=mode,
            grid=GridInfo(**entry.rig.grid.metadata(), png_base64=png),
            timing_ms=result.timings_ms,
            device_to_host_bytes=result.device_to_host_bytes,
            input_size_wh={name: [w, h] for name, (h, w) in zip(entry.rig.camera_names, result.input_sizes_hw, strict=True)},
            camera_labels={k: base64.b64encode(v).decode("ascii") for k, v in camera_labels.items()} if camera_labels else None,
        )


def bev_form_schema(camera_names: tuple[str, ...]) -> dict[str, Any]:
    """The multipart body of ``POST /v1/bev``: one file field per camera of the default rig."""
    cameras = ", ".join(camera_names) or "none loaded"
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": f"one file per camera, the field named after the camera (the default rig's: {cameras}); "
                    "optional fields rig and labels",
                    "properties": {
                        "rig": {"type": "string"},
                        "labels": {"type": "boolean"},
                        **{name: {"type": "string", "format": "binary"} for name in camera_names},
                    },
                    "additionalProperties": {"type": "string", "format": "binary"},
                }
            }
        },
    }
