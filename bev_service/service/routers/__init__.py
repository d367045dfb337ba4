"""One router per resource; ``create_app`` includes them all (``ROUTERS``)."""

from __future__ import annotations

from fastapi import APIRouter

from bev_service.service.routers import bev, docs, health, meta, rigs, stream, viewer

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    bev.router,
    rigs.router,
    meta.router,
    viewer.demo_router,
    stream.router,
    viewer.router,
    docs.router,
)
