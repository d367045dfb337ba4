"""``/v1/rigs``: list, read (JSON or YAML), store (PUT YAML or JSON), delete, and the coverage picture of each rig."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from bev_service.errors import CalibrationError
from bev_service.service.deps import State, Store, Token
from bev_service.service.errors import ApiError
from bev_service.service.negotiate import best_match
from bev_service.service.rigs import check_rig_id
from bev_service.service.schemas import ERRORS, RigList, RigPublic, RigSummary, binary

# JSON is read by the same (YAML) reader: a JSON document is a YAML one.
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain", "application/json")

router = APIRouter(prefix="/v1/rigs", tags=["rigs"], dependencies=[Token], responses={401: ERRORS[401]})


@router.get("", summary="The rigs this service knows")
async def list_rigs(store: Store) -> RigList:
    return RigList(default=store.default_id, rigs=[RigSummary.of(e, store.default_id) for e in store.entries()])


@router.get(
    "/{rig_id}",
    summary="One rig: JSON summary with its YAML, or the YAML alone with Accept: application/yaml",
    response_model=RigPublic,
    responses={
        404: ERRORS[404],
        422: ERRORS[422],
        200: {"content": {"application/yaml": {"schema": {"type": "string"}}}},
    },
)
async def get_rig(rig_id: str, request: Request, store: Store) -> RigPublic | Response:
    entry = store.get(check_rig_id(rig_id))
    text = await asyncio.to_thread(lambda: entry.yaml_text)
    accept = request.headers.get("accept", "")
    kind = best_match(accept, ("application/json", *YAML_TYPES[:4]))
    if kind is None:
        raise ApiError(406, "not_acceptable", f"Accept {accept[:200]!r} allows neither application/json nor application/yaml")
    if kind != "application/json":
        return Response(text, media_type="application/yaml")
    return RigPublic(**RigSummary.of(entry, store.default_id).model_dump(), yaml=text)


@router.put(
    "/{rig_id}",
    summary="Store a rig (YAML or JSON body): validated, written atomically, swapped in without disturbing requests in flight",
    response_model=RigSummary,
    responses={
        **{k: ERRORS[k] for k in (409, 413, 415, 422)},
        200: {"description": "replaced"},
        201: {"model": RigSummary, "description": "created"},
    },
    openapi_extra={"requestBody": {"required": True, "content": {YAML_TYPES[0]: {"schema": {"type": "string"}}}}},
)
async def put_rig(rig_id: str, request: Request, store: Store, state: State) -> JSONResponse:
    check_rig_id(rig_id)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in YAML_TYPES:
        raise ApiError(
            415, "unsupported_media_type", f"send the rig file as application/yaml or application/json, got {content_type!r}"
        )
    body = await read_body(request, state.settings.max_rig_bytes)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"a rig file must be UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    entry, created = await asyncio.to_thread(store.put, rig_id, text)
    summary = RigSummary.of(entry, store.default_id)
    return JSONResponse(summary.model_dump(), status_code=201 if created else 200)


@router.delete(
    "/{rig_id}",
    summary="Delete a stored rig and its file (not the served rig file, not the default)",
    status_code=204,
    response_class=Response,
    responses={k: ERRORS[k] for k in (404, 409, 422)},
)
async def delete_rig(rig_id: str, store: Store) -> Response:
    await asyncio.to_thread(store.delete, check_rig_id(rig_id))
    return Response(status_code=204)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 naming the limit as soon as it is known to exceed ``limit`` bytes."""
    too_large = ApiError(413, "too_large", f"a rig file may be at most {limit} bytes (limit: BEV_MAX_RIG_BYTES)")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@router.get(
    "/{rig_id}/coverage.png",
    summary="Which camera owns each grid cell (picture with a legend)",
    response_class=Response,
    responses={404: ERRORS[404], 422: ERRORS[422], **binary("image/png")},
)
async def get_coverage(rig_id: str, store: Store) -> Response:
    entry = store.get(check_rig_id(rig_id))
    png = await asyncio.to_thread(lambda: entry.coverage_png)
    return Response(png, media_type="image/png")
