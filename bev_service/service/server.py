"""The uvicorn configuration of the service, one for ``bev serve`` and the tests alike.

uvicorn's own limits where it has them (open connections, keep-alive, WebSocket pings and message
size, graceful shutdown), and what it lacks in ``BoundedHttpToolsProtocol``: a deadline for a
request's headers, so a half-sent request cannot hold a connection, and a hard cap on open
connections, so a flood of idle sockets cannot exhaust the process's file descriptors (and with
them ``/healthz`` and every client). The access log never shows a ``token`` query parameter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any
from urllib.parse import unquote_plus

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from bev_service.service.settings import Settings

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 10  # open requests and streams get this long to finish when the server stops
HARD_CAP_FACTOR = 2  # connections beyond this many times max_connections are closed unread
CAP_WARNING_INTERVAL_S = 10.0  # under a flood, one warning per interval rather than one per socket
# uvicorn logs each request's path with its query on uvicorn.access, and each WebSocket's on uvicorn.error.
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error")
SECRET_QUERY_PARAMETERS = frozenset({"token"})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with two bounds (``bounded_http_protocol`` sets them per server).

    A request's headers must be complete within ``timeout_headers_s``: counted from the connection
    for its first request and from the first byte for each later one (an idle keep-alive connection
    is uvicorn's ``timeout_keep_alive``); past it the client gets a 408 and the connection is closed.
    A connection accepted while ``max_open`` are open is closed at once without reading a byte.
    Between uvicorn's ``limit_concurrency`` and ``max_open``, uvicorn answers 503.
    """

    timeout_headers_s: float = 10.0
    max_open: int = 2 * 256
    _last_cap_warning: float = float("-inf")  # per configured class: per server

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._headers_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_open:
            self.transport = transport  # connection_lost closes it again, as uvicorn does
            transport.close()
            self._warn_capped()
            return
        super().connection_made(transport)
        self._arm_headers_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_headers_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._headers_timer is None:  # a fresh connection's deadline runs from the connection
            self._arm_headers_timer()

    def on_headers_complete(self) -> None:
        self._cancel_headers_timer()
        super().on_headers_complete()

    def _arm_headers_timer(self) -> None:
        self._headers_timer = self.loop.call_later(self.timeout_headers_s, self._headers_timed_out)

    def _cancel_headers_timer(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_timed_out(self) -> None:
        self._headers_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request is slow while an earlier one is answered: end after that answer.
            self.cycle.keep_alive = False
            return
        log.debug("%s: no complete request headers within %g s; closing", self.client, self.timeout_headers_s)
        self.transport.write(self._timeout_response())
        self.transport.close()

    def _timeout_response(self) -> bytes:
        detail = f"the request's headers did not arrive within {self.timeout_headers_s:g} s"
        body = json.dumps({"error": "timeout", "detail": detail}).encode()
        content = [STATUS_LINE[408]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n"]
        return b"".join(content) + body

    def _warn_capped(self) -> None:
        now = time.monotonic()
        cls = type(self)
        if now - cls._last_cap_warning >= CAP_WARNING_INTERVAL_S:
            cls._last_cap_warning = now
            log.warning("%d connections open: closing new ones unread until some close", self.max_open)


def bounded_http_protocol(*, headers_s: float, max_open: int) -> type[BoundedHttpToolsProtocol]:
    """A ``BoundedHttpToolsProtocol`` class with these bounds (uvicorn instantiates the class it is given)."""
    if headers_s <= 0 or max_open < 1:
        raise ValueError(f"expected headers_s > 0 and max_open >= 1, got {headers_s} and {max_open}")

    class Configured(BoundedHttpToolsProtocol):
        pass

    Configured.timeout_headers_s, Configured.max_open = headers_s, max_open
    return Configured


_QUERY_PARAMETER = re.compile(r"(?<=[?&])([^=&#\s\"]+)=([^&#\s\"]*)")


def redact_query(text: str) -> str:
    """``text`` with the value of each ``token`` query parameter (also percent-encoded) as ``[redacted]``."""

    def one(match: re.Match[str]) -> str:
        return f"{match[1]}=[redacted]" if unquote_plus(match[1]) in SECRET_QUERY_PARAMETERS else match[0]

    return _QUERY_PARAMETER.sub(one, text) if "?" in text else text


class RedactToken(logging.Filter):
    """Redacts ``token`` query parameters in a record's message and arguments (``redact_query``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def install_token_redaction() -> None:
    """A ``RedactToken`` on each of uvicorn's loggers that show URLs. Logger filters outlive uvicorn's
    ``dictConfig`` (which replaces handlers, not filters), so once is enough for every server."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactToken) for f in logger.filters):
            logger.addFilter(RedactToken())


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """How the service runs under uvicorn, from ``settings`` (host, port, log level, connection limits)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        http=bounded_http_protocol(headers_s=settings.timeout_headers_s, max_open=HARD_CAP_FACTOR * settings.max_connections),
        limit_concurrency=settings.max_connections,
        # uvicorn annotates an int but passes it to call_later, which takes fractions of a second too.
        timeout_keep_alive=settings.timeout_keep_alive_s,  # type: ignore[arg-type]
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_interval_s,
        ws_max_size=settings.ws_max_message_bytes,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    install_token_redaction()
    return config
