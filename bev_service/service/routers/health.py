"""``/healthz`` (alive), ``/readyz`` (loaded and warmed up), ``/metrics`` (this process) and ``/metrics/fleet``
(every replica of a fleet, each sample labelled with its replica): open, no token."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from bev_service.service.deps import State
from bev_service.service.metrics import merge_replicas
from bev_service.service.schemas import Health, NotReady, Readiness

router = APIRouter(tags=["health"])
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
AS_TEXT: dict[str, Any] = {
    "response_class": PlainTextResponse,
    "responses": {200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
}


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
    **AS_TEXT,
)
async def metrics(state: State) -> Response:
    return Response(state.render_metrics(), media_type=PROMETHEUS_TEXT)


@router.get(
    "/metrics/fleet",
    summary="Prometheus metrics of every replica, each sample labelled replica",
    **AS_TEXT,
)
async def fleet_metrics(state: State) -> Response:
    """Under ``bev serve --engine ray``, what each live replica last reported (every few seconds) and this one's
    as of now; a single process is a fleet of one."""
    texts = await state.replicas.texts() if state.replicas is not None else {}
    texts[state.settings.instance_name or f"{socket.gethostname()}:{os.getpid()}"] = state.render_metrics()
    return Response(merge_replicas(texts), media_type=PROMETHEUS_TEXT)
