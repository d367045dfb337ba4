"""``/healthz`` (alive), ``/readyz`` (loaded and warmed up) and ``/metrics``: open, no token."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from bev_service.service.deps import State
from bev_service.service.schemas import Health, NotReady, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz(state: State) -> Health:
    return Health(uptime_s=round(time.time() - state.started_at, 1))


@router.get(
    "/readyz",
    summary="Model loaded, tables built, warmed up",
    response_model=Readiness,
    responses={503: {"model": NotReady, "description": "not ready yet (Retry-After)"}},
)
async def readyz(state: State) -> Readiness | JSONResponse:
    if state.ready.is_set():
        return Readiness()  # open to all: the rigs and the model are told on /v1 (with the token)
    body = NotReady(detail=state.error or "loading")
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "2"})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(state: State) -> Response:
    if state.engine is not None:
        state.metrics.queue_depth.set(state.engine.depth())
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
