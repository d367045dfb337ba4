"""``create_app(settings)``: the FastAPI app of the service (REST, the WebSocket stream, the viewer).

Routes (OpenAPI at ``/docs``): ``POST /v1/bev``; ``GET /v1/rigs``, ``GET|PUT /v1/rigs/{id}``,
``GET /v1/rigs/{id}/coverage.png``; ``GET /v1/classes``; ``GET /v1/model``; ``GET /v1/demo/frames/{i}``;
``GET /healthz``, ``GET /readyz``, ``GET /metrics``; WebSocket ``/v1/stream``; the viewer at ``/``.
Every bad input is a 4xx JSON ``{"error": kind, "detail": message}``; the process stays up.

No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations at run
time, and those of closures must be real objects, not strings.
"""

import asyncio
import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bev_service.calib.coverage import coverage_of, coverage_picture
from bev_service.calib.rigfile import rig_to_yaml
from bev_service.classes import class_table
from bev_service.errors import BevError, CalibrationError, FrameError, ModelError
from bev_service.imageio import encode_png
from bev_service.pipeline import BevResult
from bev_service.service.demo import DemoDrive
from bev_service.service.engine import OverloadedError
from bev_service.service.rigs import RigEntry, UnknownRigError, check_rig_id
from bev_service.service.settings import Settings
from bev_service.service.state import ServiceState

log = logging.getLogger(__name__)

VIEWER_DIR = Path(__file__).resolve().parent / "viewer"
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
MAX_FORM_PARTS = 32


class ApiError(Exception):
    """An error answered as ``{"error": kind, "detail": message}`` with ``status``."""

    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers or {}


class BodyTooLargeError(Exception):
    pass


def error_response(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


# -- response models (the OpenAPI schema) ---------------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="kind of error: bad_frame, unknown_rig, bad_rig, too_large, unauthorized, overloaded, ...")
    detail: str = Field(description="what was wrong, naming the camera or field")


class GridInfo(BaseModel):
    rows: int
    cols: int
    cell_size_m: float
    x_range_m: list[float]
    y_range_m: list[float]
    frame: str
    row_col_convention: str
    unknown_value: int
    ego_value: int
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


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed request",
        401: "missing or wrong bearer token",
        404: "unknown rig",
        413: "body or image too large",
        415: "unsupported content type",
        422: "unusable frame set or rig file",
        503: "not ready or overloaded (Retry-After)",
    }.items()
}


def _rig_summary(entry: RigEntry, default_id: str) -> dict[str, Any]:
    rig = entry.rig
    return {
        "id": rig.rig_id,
        "version": rig.version,
        "default": rig.rig_id == default_id,
        "fingerprint": rig.fingerprint,
        "cameras": [
            {"name": c.name, "model": type(c.model).__name__, "image_size_wh": [c.image_size_hw[1], c.image_size_hw[0]]}
            for c in rig.cameras
        ],
        "grid": rig.grid.metadata(),
        "ego": {"x_range_m": list(rig.ego.x_range_m), "y_range_m": list(rig.ego.y_range_m)},
    }


# -- middleware -----------------------------------------------------------------------------------


class BodyLimit:
    """Refuses bodies over ``max_bytes``: by Content-Length before reading, and by counting while
    reading (chunked uploads), so an oversized upload is never buffered whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = error_response(
                413, "too_large", f"request body of {int(length)} bytes exceeds the {self.max_bytes}-byte limit"
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLargeError()
            return message

        await self.app(scope, counted, send)


# -- the app --------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        yield
        await asyncio.to_thread(state.close)

    app = FastAPI(
        title="bev-service",
        version="0.1.0",
        summary="Surround-view camera frames to a bird's-eye-view label grid.",
        lifespan=lifespan,
    )
    app.state.bev = state
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    bearer = HTTPBearer(auto_error=False, description="BEV_API_TOKEN, when the service sets one")

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if settings.api_token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), settings.api_token.encode()):
            raise ApiError(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer <token>)")

    def ready_state() -> ServiceState:
        if not state.ready.is_set():
            detail = f"not ready: {state.error}" if state.error else "not ready: loading the model and building the rig tables"
            raise ApiError(503, "not_ready", detail, {"Retry-After": "2"})
        return state

    Ready = Annotated[ServiceState, Depends(ready_state)]
    demo: dict[str, DemoDrive] = {}

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        state.metrics.requests.labels(route=path, method=request.method, status=str(response.status_code)).inc()
        return response

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.kind, exc.detail, exc.headers)

    @app.exception_handler(BevError)
    async def _bev_error(request: Request, exc: BevError) -> JSONResponse:
        if isinstance(exc, UnknownRigError):
            return error_response(404, "unknown_rig", str(exc))
        if isinstance(exc, OverloadedError):
            return error_response(503, "overloaded", str(exc), {"Retry-After": str(max(1, round(exc.retry_after_s)))})
        if isinstance(exc, CalibrationError):
            return error_response(422, "bad_rig", str(exc))
        if isinstance(exc, FrameError):
            return error_response(422, "bad_frame", str(exc))
        if isinstance(exc, ModelError):
            return error_response(503, "model", str(exc), {"Retry-After": "30"})
        return error_response(400, "bad_request", str(exc))

    @app.exception_handler(BodyTooLargeError)
    async def _too_large(request: Request, exc: BodyTooLargeError) -> JSONResponse:
        return error_response(413, "too_large", f"request body exceeds the {settings.max_body_bytes}-byte limit")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        return error_response(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail), dict(exc.headers or {}))

    # -- health --------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - state.started_at, 1)}

    @app.get("/readyz", tags=["health"], summary="Model loaded, tables built, warmed up", responses={503: ERRORS[503]})
    async def readyz() -> JSONResponse:
        if state.ready.is_set():
            assert state.store is not None
            return JSONResponse({"ready": True, "rigs": state.store.ids(), "backend": state.model_info.get("backend")})
        body = {"ready": False, "error": "not_ready", "detail": state.error or "loading"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        if state.engine is not None:
            state.metrics.queue_depth.set(state.engine.depth())
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- /v1 ---------------------------------------------------------------------------------------

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses={401: ERRORS[401]})

    bev_body = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "description": "one file per camera, the field named after the camera (the default rig's: front, left, "
                        "rear, right); optional fields rig and labels",
                        "properties": {
                            "rig": {"type": "string"},
                            "labels": {"type": "boolean"},
                            **{name: {"type": "string", "format": "binary"} for name in ("front", "left", "rear", "right")},
                        },
                        "additionalProperties": {"type": "string", "format": "binary"},
                    }
                }
            },
        }
    }

    @v1.post(
        "/bev",
        tags=["bev"],
        summary="One frame set to its BEV grid",
        description="JSON by default; `Accept: image/png` (or format=png) gives the palette PNG of class ids, "
        "`Accept: application/octet-stream` (or format=raw) the rows x cols bytes. With labels=true the files are "
        "per-camera label maps (8-bit PNG of class ids) and are only warped and fused.",
        response_model=BevReply,
        responses={
            **{k: v for k, v in ERRORS.items() if k != 401},
            200: {"content": {"image/png": {}, "application/octet-stream": {}}},
        },
        openapi_extra=bev_body,
    )
    async def post_bev(
        request: Request,
        st: Ready,
        format: Literal["json", "png", "raw"] | None = None,
        rig: Annotated[str | None, Query(max_length=64)] = None,
        labels: bool = False,
    ) -> Response:
        assert st.store is not None and st.engine is not None
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(
                415, "unsupported_media_type", f"expected multipart/form-data with one file per camera, got {content_type!r}"
            )
        began = time.perf_counter()
        files, fields = await _read_form(request)
        rig = fields.get("rig", rig)
        if "labels" in fields:
            labels = fields["labels"].lower() in ("1", "true", "yes", "on")
        entry = st.store.get(rig)
        if not files:
            raise FrameError(f"no image files in the form; expected one per camera: {', '.join(entry.rig.camera_names)}")
        source = "rest-labels" if labels else "rest"
        try:
            result = await (st.engine.fuse(entry, files) if labels else st.engine.infer(entry, files))
        except FrameError:
            st.metrics.bad_frames.labels(source=source).inc()
            raise
        st.metrics.frames.labels(source=source).inc()
        st.metrics.observe_stages(result.timings_ms)
        st.metrics.request_latency.labels(source=source).observe(time.perf_counter() - began)
        kind = format or _negotiate(request.headers.get("accept", ""))
        headers = {"X-BEV-Rig": entry.rig_id, "X-BEV-Rows": str(result.grid.shape[0]), "X-BEV-Cols": str(result.grid.shape[1])}
        headers["Server-Timing"] = ", ".join(f"{k};dur={v:.2f}" for k, v in result.timings_ms.items())
        if kind == "png":
            assert result.encoded is not None
            return Response(result.encoded, media_type="image/png", headers=headers)
        if kind == "raw":
            return Response(result.grid.tobytes(), media_type="application/octet-stream", headers=headers)
        return JSONResponse(_bev_json(st, entry, result, "labels" if labels else "images"), headers=headers)

    @v1.get("/rigs", tags=["rigs"], summary="The rigs this service knows")
    async def list_rigs(st: Ready) -> dict[str, Any]:
        assert st.store is not None
        return {"default": st.store.default_id, "rigs": [_rig_summary(e, st.store.default_id) for e in st.store.entries()]}

    @v1.get(
        "/rigs/{rig_id}",
        tags=["rigs"],
        summary="One rig: JSON summary with its YAML, or the YAML alone with Accept: application/yaml",
        responses={404: ERRORS[404], 422: ERRORS[422], 200: {"content": {"application/yaml": {}}}},
    )
    async def get_rig(rig_id: str, request: Request, st: Ready) -> Response:
        assert st.store is not None
        entry = st.store.get(check_rig_id(rig_id))
        text = rig_to_yaml(entry.rig)
        if "yaml" in request.headers.get("accept", ""):
            return Response(text, media_type="application/yaml")
        return JSONResponse({**_rig_summary(entry, st.store.default_id), "yaml": text})

    @v1.put(
        "/rigs/{rig_id}",
        tags=["rigs"],
        summary="Store a rig (YAML body): validated, written atomically, swapped in without disturbing requests in flight",
        responses={**{k: ERRORS[k] for k in (413, 415, 422)}, 201: {"description": "created"}},
        openapi_extra={"requestBody": {"required": True, "content": {t: {"schema": {"type": "string"}} for t in YAML_TYPES[:1]}}},
    )
    async def put_rig(rig_id: str, request: Request, st: Ready) -> JSONResponse:
        assert st.store is not None
        check_rig_id(rig_id)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in YAML_TYPES:
            raise ApiError(
                415, "unsupported_media_type", f"send the rig file as application/yaml, got {content_type or 'none'!r}"
            )
        body = await request.body()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CalibrationError(f"a rig file must be UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        store = st.store
        entry, created = await asyncio.to_thread(store.put, rig_id, text)
        return JSONResponse(_rig_summary(entry, store.default_id), status_code=201 if created else 200)

    coverage_cache: dict[str, tuple[str, bytes]] = {}  # rig id -> (fingerprint, PNG): one picture per rig

    @v1.get(
        "/rigs/{rig_id}/coverage.png",
        tags=["rigs"],
        summary="Which camera owns each grid cell (picture with a legend)",
        response_class=Response,
        responses={404: ERRORS[404], 422: ERRORS[422], 200: {"content": {"image/png": {}}}},
    )
    async def get_coverage(rig_id: str, st: Ready) -> Response:
        assert st.store is not None
        entry = st.store.get(check_rig_id(rig_id))
        cached = coverage_cache.get(entry.rig_id)
        if cached is None or cached[0] != entry.rig.fingerprint:

            def draw() -> bytes:
                tables = entry.pipeline.projector.tables
                picture, _ = coverage_picture(tables, coverage_of(tables))
                return encode_png(picture)

            cached = (entry.rig.fingerprint, await asyncio.to_thread(draw))
            coverage_cache[entry.rig_id] = cached
        return Response(cached[1], media_type="image/png")

    @v1.get("/classes", tags=["meta"], summary="The class table: ids, names, colours; grid-only EGO and UNKNOWN")
    async def classes() -> list[dict[str, Any]]:
        return class_table()

    @v1.get("/model", tags=["meta"], summary="The model being served")
    async def model(st: Ready) -> dict[str, Any]:
        return st.model_info

    @v1.get(
        "/demo/frames/{index}",
        tags=["demo"],
        summary="Frame set `index` of the built-in synthetic drive (msgpack: index, count, stamp, images)",
        response_class=Response,
        responses={404: ERRORS[404], 200: {"content": {"application/msgpack": {}}}},
    )
    async def demo_frame(index: int, st: Ready) -> Response:
        assert st.store is not None
        if "drive" not in demo:
            default = st.store.get(None).rig
            demo["drive"] = DemoDrive(default, settings.demo_frames, scale=settings.demo_scale)
        drive = demo["drive"]
        if not 0 <= index < drive.frames:
            raise ApiError(404, "not_found", f"the demo drive has frame sets 0 to {drive.frames - 1}")
        return Response(await asyncio.to_thread(drive.frame, index), media_type="application/msgpack")

    app.include_router(v1)

    from bev_service.service.stream import stream_router

    app.include_router(stream_router(state))

    # -- the viewer --------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def viewer() -> Response:
        index = VIEWER_DIR / "index.html"
        if not index.is_file():
            return PlainTextResponse("the viewer is not installed", status_code=404)
        return FileResponse(index, media_type="text/html")

    app.mount("/viewer", StaticFiles(directory=VIEWER_DIR, check_dir=False), name="viewer")
    return app


def _negotiate(accept: str) -> Literal["json", "png", "raw"]:
    accept = accept.lower()
    if "image/png" in accept:
        return "png"
    if "application/octet-stream" in accept:
        return "raw"
    return "json"


async def _read_form(request: Request) -> tuple[dict[str, bytes], dict[str, str]]:
    """The form's files by field name and its plain fields; a field twice, or too many parts, is an error."""
    try:
        form = await request.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS)
    except StarletteHTTPException as exc:
        raise ApiError(400, "bad_request", f"cannot parse the multipart body: {exc.detail}") from exc
    files: dict[str, bytes] = {}
    fields: dict[str, str] = {}
    try:
        for key, value in form.multi_items():
            if key in files or key in fields:
                raise FrameError(f"form field {key!r} given twice")
            if isinstance(value, UploadFile):
                files[key] = await value.read()
            elif key in ("rig", "labels"):
                fields[key] = value
            else:
                raise FrameError(
                    f"form field {key!r} is not a file; send each camera's image as a file part named after the camera"
                )
    finally:
        await form.close()
    return files, fields


def _bev_json(st: ServiceState, entry: RigEntry, result: BevResult, mode: str) -> dict[str, Any]:
    assert result.encoded is not None
    return {
        "rig": entry.rig_id,
        "rig_fingerprint": entry.rig.fingerprint,
        "model": st.model_info.get("file", ""),
        "backend": st.model_info.get("backend", ""),
        "mode": mode,
        "grid": {**entry.rig.grid.metadata(), "encoding": "png", "png_base64": base64.b64encode(result.encoded).decode("ascii")},
        "timing_ms": result.timings_ms,
        "device_to_host_bytes": result.device_to_host_bytes,
    }
