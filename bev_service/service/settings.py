"""Service settings: each field is a ``BEV_<NAME>`` environment variable (``BEV_API_TOKEN``, ``BEV_PORT``...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bev_service.calib.rigfile import MAX_RIG_CAMERAS
from bev_service.imageio import DEFAULT_MAX_PIXELS
from bev_service.shipped import DEFAULT_RIG, PRUNED_MODEL

MIB = 1 << 20


class Settings(BaseSettings):
    """What ``bev serve`` and ``create_app`` run with. Paths are relative to the working directory."""

    model_config = SettingsConfigDict(env_prefix="BEV_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    model: Path = PRUNED_MODEL
    # auto: torch on CUDA when present, else ONNX Runtime on the .onnx beside the model when it exists, else torch on the CPU
    backend: str = "auto"
    device: str | None = None  # torch device for the torch backend (cpu, cuda, cuda:1)
    # On ONNX Runtime with a .pt model: serve the int8 graph beside it (<stem>-int8.onnx, from bev quantize) when it
    # was quantized from the .onnx there now, else the float .onnx (the model card: the same mIoU, 1.2x faster)
    int8: bool = True
    # Pixels each camera runs through the network at, in its own aspect ratio (None: the model's training size)
    input_pixels: Annotated[int | None, Field(gt=0)] = None
    rig: Path = DEFAULT_RIG  # served under its rig_id; the default rig of requests
    rigs_dir: Path = Path("build/rigs")  # rigs stored by PUT /v1/rigs/{id}, read at start (tables built later)
    # A stored rig to serve as the default instead of the rig file's (the shipped default is never overwritten)
    default_rig_id: str | None = None
    # Several processes (Ray Serve replicas, or services on one volume) share rigs_dir: each notices the others'
    # PUTs and DELETEs there before it answers, and writes under a lock file in it (README, "Serving many vehicles")
    shared_rigs_dir: bool = False
    # A name every reply carries in its X-Bev-Instance header (set per replica by bev serve --engine ray)
    instance_name: str | None = None
    # A proxy in front (Ray Serve's) gives each request its X-Request-ID and puts it on the reply: the app uses it but
    # does not add the header a second time
    proxy_sets_request_id: bool = False
    api_token: str | None = None  # bearer token required on /v1 and the stream when set
    max_body_bytes: Annotated[int, Field(gt=0)] = 32 * MIB
    max_image_pixels: Annotated[int, Field(gt=0)] = DEFAULT_MAX_PIXELS  # per decoded image: a decompression bomb stops here
    queue_size: Annotated[int, Field(ge=1)] = 8  # frame sets waiting for the network; beyond it 503 with Retry-After
    max_batch: Annotated[int, Field(ge=1)] = 2  # frame sets of one rig segmented in one network call
    confidence_fusion: bool = False
    warmup: bool = True
    ws_max_message_bytes: Annotated[int, Field(gt=0)] = 32 * MIB
    # -- the rig store (README, "Limits") --
    max_rigs: Annotated[int, Field(ge=0)] = 16  # rigs stored by PUT, besides the served rig file
    max_cameras: Annotated[int, Field(ge=1, le=MAX_RIG_CAMERAS)] = 16  # per rig; REST and the stream take as many
    max_rig_cells: Annotated[int, Field(gt=0)] = 4 * 1024 * 1024  # grid cells times cameras of one rig (40-60 bytes each)
    max_total_cells: Annotated[int, Field(gt=0)] = 16 * 1024 * 1024  # the same summed over the stored rigs
    max_rig_bytes: Annotated[int, Field(gt=0)] = MIB  # a rig file (YAML or JSON)
    max_mask_pixels: Annotated[int, Field(gt=0)] = 48 * MIB  # pixels of a rig's masked cameras (a byte each)
    # -- connections --
    max_connections: Annotated[int, Field(ge=1)] = 256  # open HTTP connections; beyond it 503, far beyond it closed at once
    max_streams: Annotated[int, Field(ge=1)] = 32  # WebSocket sessions; beyond it closed with 1013
    timeout_headers_s: Annotated[float, Field(gt=0)] = 10.0  # for a request's headers, from its first byte
    timeout_body_s: Annotated[float, Field(gt=0)] = 30.0  # between two pieces of a request's body; beyond it 408
    timeout_keep_alive_s: Annotated[float, Field(gt=0)] = 5.0  # an idle keep-alive connection is closed
    ws_idle_timeout_s: Annotated[float, Field(gt=0)] = 60.0  # a stream that sends no frame set for this long is closed (1001)
    ws_ping_interval_s: Annotated[float, Field(gt=0)] = 20.0  # pings; a peer that does not answer within as long is dropped
    demo_frames: Annotated[int, Field(ge=1)] = 24  # frame sets of the viewer's built-in synthetic drive
    demo_scale: Annotated[float, Field(gt=0, le=1.0)] = 1.0  # the drive is rendered at this fraction of the rig's image size
    # -- the Foxglove live view (README, "Live view in Foxglove") --
    # A Foxglove WebSocket server publishing the cameras and the grid on this port when set (0: any free port)
    foxglove_port: Annotated[int | None, Field(ge=0, le=65535)] = None
    foxglove_host: str = "127.0.0.1"
    foxglove_queue_size: Annotated[int, Field(ge=1)] = 4  # frame sets waiting to be published; beyond it the oldest is dropped
    log_level: str = "info"

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend must be auto, torch or onnx, got {value!r}")
        return value
