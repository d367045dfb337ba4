"""ASGI middleware: request ids, the request-body limits and the per-route request counter."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable

import anyio
from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bev_service.service.errors import BodyTimeoutError, BodyTooLargeError, error_response
from bev_service.service.state import ServiceState

log = logging.getLogger(__name__)

# A client's own X-Request-ID is kept when it looks like one; otherwise the service makes one up.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client gone before its answer; only the request counter sees it


class RequestId:
    """Gives each request an id (the client's ``X-Request-ID`` when well-formed, else a new one), in
    ``scope["request_id"]`` for the log lines about it and in the reply's ``X-Request-ID`` header; with an
    ``instance`` name, the reply says in ``X-Bev-Instance`` which process answered (a replica of several).
    Behind a proxy that sets ``X-Request-ID`` on the request and the reply (``proxied``), the id is the proxy's
    and only the instance header is added."""

    def __init__(self, app: ASGIApp, instance: str | None = None, proxied: bool = False) -> None:
        self.app = app
        self.instance = [(b"x-bev-instance", instance.encode("latin-1"))] if instance else []
        self.proxied = proxied

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        scope["request_id"] = request_id

        added = self.instance if self.proxied else [(b"x-request-id", request_id.encode()), *self.instance]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *added]}
            elif message["type"] == "websocket.accept" and self.instance:  # a stream says where it runs too
                message = {**message, "headers": [*message.get("headers", []), *self.instance]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimit:
    """Refuses bodies over ``max_bytes``: by Content-Length before reading, and by counting while
    reading (chunked uploads), so an oversized upload is never buffered whole. A body whose next
    piece takes over ``timeout_s`` to arrive raises ``BodyTimeoutError`` (a 408), so a client that
    stops sending cannot hold its request, and the connection, forever."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        if max_bytes < 1 or timeout_s <= 0:
            raise ValueError(f"expected max_bytes >= 1 and timeout_s > 0, got {max_bytes} and {timeout_s}")
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

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
        seen, complete = 0, False

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:  # what follows the body is the wait for a disconnect, which has no deadline
                return await receive()
            try:
                with anyio.fail_after(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(self.timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLargeError()
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, counted, send)


async def client_disconnected(request: Request, exc: Exception) -> Response:
    """A client that went away mid-upload is no error of the service: a debug line, no traceback."""
    log.debug(
        "request %s: %s %s: the client disconnected before sending its whole body",
        request.scope.get("request_id"),
        request.method,
        request.url.path,
    )
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def add_middleware(app: FastAPI, state: ServiceState) -> None:
    settings = state.settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.timeout_body_s)
    # Starlette raises ClientDisconnect where a route reads the body of a client that went away.
    app.add_exception_handler(ClientDisconnect, client_disconnected)

    # Added last, so outermost: a body refused by BodyLimit is counted too.
    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        path = getattr(request.scope.get("route"), "path", "unmatched")
        state.metrics.requests.labels(route=path, method=request.method, status=str(response.status_code)).inc()
        return response

    # Outermost of all: every reply has its id, a refused body's too.
    app.add_middleware(RequestId, instance=settings.instance_name, proxied=settings.proxy_sets_request_id)
