"""``POST /v1/bev``: one frame set (a multipart form, a file per camera) to its BEV grid.

The form's fields are documented per rig camera by ``openapi.py``: FastAPI cannot declare form
fields whose names are only known once the rig is loaded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from bev_service.errors import FrameError
from bev_service.service.deps import Ready, Token
from bev_service.service.errors import ApiError
from bev_service.service.negotiate import best_match
from bev_service.service.schemas import ERRORS, BevReply
from bev_service.service.state import encode_camera_labels

PATH = "/v1/bev"
Format = Literal["json", "png", "raw"]
MEDIA_TYPES: dict[str, Format] = {"application/json": "json", "image/png": "png", "application/octet-stream": "raw"}
FORM_FIELDS = ("rig", "labels", "camera_labels")
TRUE = ("1", "true", "yes", "on")

router = APIRouter(tags=["bev"], dependencies=[Token], responses={401: ERRORS[401]})


@router.post(
    PATH,
    summary="One frame set to its BEV grid",
    description="JSON by default; `Accept: image/png` (or format=png) gives the palette PNG of class ids, "
    "`Accept: application/octet-stream` (or format=raw) the rows x cols bytes. With labels=true the files are "
    "per-camera label maps (8-bit PNG of class ids) and are only warped and fused. With camera_labels=true the JSON reply "
    "also holds each camera's label map the grid was warped from.",
    response_model=BevReply,
    responses={
        **{k: v for k, v in ERRORS.items() if k != 401},
        200: {
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }
        },
    },
)
async def post_bev(
    request: Request,
    st: Ready,
    format: Format | None = None,
    rig: Annotated[str | None, Query(max_length=64)] = None,
    labels: bool = False,
    camera_labels: bool = False,
) -> Response:
    assert st.store is not None and st.engine is not None
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            415, "unsupported_media_type", f"expected multipart/form-data with one file per camera, got {content_type!r}"
        )
    kind = format or negotiate(request.headers.get("accept", ""))
    began = time.perf_counter()
    files, fields = await read_form(request, st.settings.max_cameras)
    rig = fields.get("rig", rig)
    if "labels" in fields:
        labels = fields["labels"].lower() in TRUE
    if "camera_labels" in fields:
        camera_labels = fields["camera_labels"].lower() in TRUE
    entry = st.store.get(rig)
    if not files:
        raise FrameError(f"no image files in the form; expected one per camera: {', '.join(entry.rig.camera_names)}")
    source = "rest-labels" if labels else "rest"
    try:
        result = await (st.engine.fuse(entry, files) if labels else st.engine.infer(entry, files))
    except FrameError:
        st.metrics.frame_set_refused(source)
        raise
    st.metrics.frame_set_answered(source, result.timings_ms, began)
    st.publish(entry.rig, None if labels else files, result)
    headers = {"X-BEV-Rig": entry.rig_id, "X-BEV-Rows": str(result.grid.shape[0]), "X-BEV-Cols": str(result.grid.shape[1])}
    headers["Server-Timing"] = ", ".join(f"{k};dur={v:.2f}" for k, v in result.timings_ms.items())
    if kind == "png":
        assert result.encoded is not None
        return Response(result.encoded, media_type="image/png", headers=headers)
    if kind == "raw":
        return Response(result.grid.tobytes(), media_type="application/octet-stream", headers=headers)
    maps = await asyncio.to_thread(encode_camera_labels, entry.rig, result) if camera_labels else None
    reply = BevReply.of(entry, result, st.model_info, "labels" if labels else "images", maps)
    return JSONResponse(reply.model_dump(), headers=headers)


def negotiate(accept: str) -> Format:
    """What ``Accept`` asks for, by quality (``q=0`` refuses a type); 406 when it accepts none of them."""
    media_type = best_match(accept, tuple(MEDIA_TYPES))
    if media_type is None:
        offered = ", ".join(MEDIA_TYPES)
        raise ApiError(406, "not_acceptable", f"Accept {accept[:200]!r} allows none of {offered} (or use ?format=)")
    return MEDIA_TYPES[media_type]


async def read_form(request: Request, max_cameras: int) -> tuple[dict[str, bytes], dict[str, str]]:
    """The form's files by field name and its plain fields; a field twice, or too many parts, is an error."""
    try:
        form = await request.form(max_files=max_cameras, max_fields=len(FORM_FIELDS))
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
            elif key in FORM_FIELDS:
                fields[key] = value
            else:
                raise FrameError(
                    f"form field {key!r} is not a file; send each camera's image as a file part named after the camera"
                )
    finally:
        await form.close()
    return files, fields
