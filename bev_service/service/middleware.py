"""ASGI middleware: the request-body limit and the per-route request counter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bev_service.service.errors import BodyTooLargeError, error_response
from bev_service.service.state import ServiceState


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


def add_middleware(app: FastAPI, state: ServiceState) -> None:
    app.add_middleware(BodyLimit, max_bytes=state.settings.max_body_bytes)

    # Added last, so outermost: a body refused by BodyLimit is counted too.
    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        path = getattr(request.scope.get("route"), "path", "unmatched")
        state.metrics.requests.labels(route=path, method=request.method, status=str(response.status_code)).inc()
        return response
