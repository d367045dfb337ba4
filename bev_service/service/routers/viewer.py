"""The browser viewer (``/``, static files under ``/viewer``) and its synthetic drive (``/v1/demo``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from bev_service.service.deps import Ready, Token
from bev_service.service.errors import ApiError
from bev_service.service.schemas import ERRORS, binary

VIEWER_DIR = Path(__file__).resolve().parent.parent / "viewer"

router = APIRouter()
demo_router = APIRouter(prefix="/v1/demo", tags=["demo"], dependencies=[Token], responses={401: ERRORS[401]})


@router.get("/", include_in_schema=False)
async def viewer() -> Response:
    index = VIEWER_DIR / "index.html"
    if not index.is_file():
        return PlainTextResponse("the viewer is not installed", status_code=404)
    return FileResponse(index, media_type="text/html")


def mount_viewer_files(app: FastAPI) -> None:
    # A mount, not a route: include_router does not carry mounts over.
    app.mount("/viewer", StaticFiles(directory=VIEWER_DIR, check_dir=False), name="viewer")


@demo_router.get(
    "/frames/{index}",
    summary="Frame set `index` of the built-in synthetic drive (msgpack: index, count, stamp, images)",
    response_class=Response,
    responses={404: ERRORS[404], **binary("application/msgpack")},
)
async def demo_frame(index: int, st: Ready) -> Response:
    drive = st.demo_drive()
    if not 0 <= index < drive.frames:
        raise ApiError(404, "not_found", f"the demo drive has frame sets 0 to {drive.frames - 1}")
    return Response(await asyncio.to_thread(drive.frame, index), media_type="application/msgpack")
