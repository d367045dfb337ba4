"""``create_app(settings)``: the FastAPI app of the service (REST, the WebSocket stream, the viewer).

Routes (OpenAPI at ``/docs``): ``POST /v1/bev``; ``GET /v1/rigs``, ``GET|PUT /v1/rigs/{id}``,
``GET /v1/rigs/{id}/coverage.png``; ``GET /v1/classes``; ``GET /v1/model``; ``GET /v1/demo/frames/{i}``;
``GET /healthz``, ``GET /readyz``, ``GET /metrics``; WebSocket ``/v1/stream``; the viewer at ``/``.
Every bad input is a 4xx JSON ``{"error": kind, "detail": message}``; the process stays up.

Each resource is a router in ``routers/``; their dependencies are in ``deps.py``, the replies'
schemas in ``schemas.py``, and the error-to-status mapping in ``errors.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bev_service import __version__
from bev_service.service.errors import ApiError, BodyTooLargeError, error_response, register_error_handlers
from bev_service.service.middleware import BodyLimit, add_middleware
from bev_service.service.openapi import install_openapi
from bev_service.service.routers import ROUTERS
from bev_service.service.routers.viewer import VIEWER_DIR, mount_viewer_files
from bev_service.service.settings import Settings
from bev_service.service.state import ServiceState

# Importable from here as before the split into routers.
__all__ = ["VIEWER_DIR", "ApiError", "BodyLimit", "BodyTooLargeError", "create_app", "error_response"]


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
        version=__version__,
        summary="Surround-view camera frames to a bird's-eye-view label grid.",
        lifespan=lifespan,
        docs_url=None,  # served from a package by routers/docs.py: offline, unlike FastAPI's CDN page
        redoc_url=None,
    )
    app.state.bev = state
    add_middleware(app, state)
    register_error_handlers(app, settings.max_body_bytes)
    for router in ROUTERS:
        app.include_router(router)
    mount_viewer_files(app)
    install_openapi(app, state)
    return app
