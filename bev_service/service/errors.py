"""The service's error types and the one mapping from an error to what a client gets.

REST answers ``{"error": kind, "detail": message}`` with an HTTP status; the stream answers
``{"seq", "error": message, "kind": kind}`` (and ``retry_after_s`` when retrying helps) and keeps
the connection. Both read ``describe``, so one bad input has one kind whichever way it came in.
The package's domain errors (``bev_service.errors``) stay free of HTTP; the statuses live here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bev_service.errors import BevError, CalibrationError, FrameError, ModelError

log = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 section 7.4.1) the stream uses.
CLOSE_GOING_AWAY = 1001  # an idle session, closed by the service
CLOSE_UNSUPPORTED = 1003  # a text frame
CLOSE_INVALID = 1007  # bytes that are not msgpack
CLOSE_POLICY = 1008  # missing or wrong token
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # not ready yet


class ApiError(Exception):
    """An error answered as ``{"error": kind, "detail": message}`` with ``status``."""

    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers or {}


class BodyTooLargeError(Exception):
    """Raised from inside the body stream by ``BodyLimit``, so it has no size of its own."""


class BodyTimeoutError(Exception):
    """Raised from inside the body stream when a client stops sending its body (``timeout_body_s``)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no part of the request body arrived for {seconds:g} s")
        self.seconds = seconds


class UnknownRigError(BevError):
    """No rig with this id."""


class ReadOnlyRigError(BevError):
    """A PUT or DELETE of the served rig file, or a DELETE of the default."""


class LimitError(BevError):
    """Over one of the service's limits; the message names its setting (``BEV_<SETTING>``)."""

    def __init__(self, message: str, setting: str, *, status: int = 422) -> None:
        super().__init__(f"{message} (limit: BEV_{setting.upper()})")
        self.setting, self.status = setting, status


class FoxgloveStartError(BevError):
    """The Foxglove server cannot start as configured (its port is taken or cannot be bound): a start-up error."""


class OverloadedError(BevError):
    """The queue is full; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StreamClose(Exception):  # noqa: N818 (a close, not an error)
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class ErrorReply:
    status: int
    kind: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None
    # The stream has always said "overloaded: ..." in its text; clients match on it.
    stream_says_kind: bool = False

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.kind, "detail": self.detail}, status_code=self.status, headers=self.headers or None)

    def stream_message(self, seq: Any) -> dict[str, Any]:
        text = f"{self.kind}: {self.detail}" if self.stream_says_kind else self.detail
        message: dict[str, Any] = {"seq": seq, "error": text, "kind": self.kind}
        if self.retry_after_s is not None:
            message["retry_after_s"] = self.retry_after_s
        return message


# Most specific first: UnknownRigError and OverloadedError are BevErrors too.
DOMAIN_ERRORS: tuple[tuple[type[BevError], int, str], ...] = (
    (UnknownRigError, 404, "unknown_rig"),
    (ReadOnlyRigError, 409, "read_only"),
    (LimitError, 422, "limit"),
    (OverloadedError, 503, "overloaded"),
    (CalibrationError, 422, "bad_rig"),
    (FrameError, 422, "bad_frame"),
    (ModelError, 503, "model"),
    (BevError, 400, "bad_request"),
)
MODEL_RETRY_AFTER_S = "30"  # a model problem is not fixed in the time of a queue


def describe(exc: BevError) -> ErrorReply:
    status, kind = next((s, k) for t, s, k in DOMAIN_ERRORS if isinstance(exc, t))
    if isinstance(exc, OverloadedError):
        seconds = max(1, round(exc.retry_after_s))
        return ErrorReply(status, kind, str(exc), {"Retry-After": str(seconds)}, exc.retry_after_s, stream_says_kind=True)
    if isinstance(exc, ModelError):
        return ErrorReply(status, kind, str(exc), {"Retry-After": MODEL_RETRY_AFTER_S})
    if isinstance(exc, LimitError):
        return ErrorReply(exc.status, kind, str(exc))
    return ErrorReply(status, kind, str(exc))


def error_response(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return ErrorReply(status, kind, detail, headers or {}).response()


HTTP_KINDS = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def logged(
    handler: Callable[[Request, Exception], Awaitable[JSONResponse]],
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    """The handler, writing one line per refused request: its id, the route, the status and why. A
    client's mistake is no error of the service's: no traceback, and at INFO (5xx at WARNING)."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        response = await handler(request, exc)
        body = bytes(response.body)
        log.log(
            logging.WARNING if response.status_code >= 500 else logging.INFO,
            "request %s: %s %s -> %d %s",
            request.scope.get("request_id", "-"),
            request.method,
            request.url.path,
            response.status_code,
            body[:300].decode("utf-8", "replace"),
        )
        return response

    return handle


def register_error_handlers(app: FastAPI, max_body_bytes: int) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.kind, exc.detail, exc.headers)

    async def bev_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BevError)
        return describe(exc).response()

    async def too_large(request: Request, exc: Exception) -> JSONResponse:
        return error_response(413, "too_large", f"request body exceeds the {max_body_bytes}-byte limit")

    async def body_timeout(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyTimeoutError)
        return error_response(408, "timeout", str(exc), {"Connection": "close"})

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = HTTP_KINDS.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))

    app.add_exception_handler(ApiError, logged(api_error))
    app.add_exception_handler(BevError, logged(bev_error))
    app.add_exception_handler(BodyTooLargeError, logged(too_large))
    app.add_exception_handler(BodyTimeoutError, logged(body_timeout))
    app.add_exception_handler(RequestValidationError, logged(invalid))
    app.add_exception_handler(StarletteHTTPException, logged(http_error))
