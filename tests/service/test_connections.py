"""Connection limits against a real uvicorn configured as ``bev serve`` configures it: half-sent
headers and stalled bodies time out with 408, a flood of idle sockets is shed while ``/healthz``
still answers and the process's file descriptors stay bounded, streams are capped (1013) and idle
ones closed (1001), the stream takes its token three ways and the logs never show it, and a client
that leaves mid-upload costs no traceback."""

from __future__ import annotations

import base64
import json
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bev_service.service.server import HARD_CAP_FACTOR
from tests.service.conftest import LiveServer

HEADERS_S = 1.0
BODY_S = 1.0
IDLE_S = 2.0
MAX_CONNECTIONS = 8
MAX_STREAMS = 2
FLOOD = 300
FD_SLACK = 16  # descriptors the server may open besides its connections (a log file, an httpx probe)
TOKEN = "connections-token"
SLOW_BODY = 100_000  # the Content-Length announced; a part of it is sent
BOUNDARY = "bev-test-boundary"


@pytest.fixture(scope="module")
def bounded(make_server: Callable[..., LiveServer]) -> LiveServer:
    """Short timeouts and small limits, so each bound is reached in a second or two."""
    return make_server(
        timeout_headers_s=HEADERS_S,
        timeout_body_s=BODY_S,
        ws_idle_timeout_s=IDLE_S,
        max_connections=MAX_CONNECTIONS,
        max_streams=MAX_STREAMS,
    )


@pytest.fixture(scope="module")
def guarded(make_server: Callable[..., LiveServer]) -> LiveServer:
    """A token-protected server with its access log at info."""
    return make_server(api_token=TOKEN, log_level="info")


# -- raw sockets ------------------------------------------------------------------------------------


def address(live: LiveServer) -> tuple[str, int]:
    parts = urlsplit(live.base_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection; fails after ``timeout_s``."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open for {timeout_s} s; got {b''.join(chunks)!r}") from None
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict((name.strip().lower(), value.strip()) for name, value in (line.split(":", 1) for line in lines))
    return int(status_line.split()[1]), headers, body


def upload_head(length: int = SLOW_BODY) -> bytes:
    """A POST /v1/bev announcing ``length`` bytes of multipart body, and the first part's headers."""
    head = (
        f"POST /v1/bev HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="front"; filename="front.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- HTTP -------------------------------------------------------------------------------------------


def test_half_sent_headers_get_408_and_the_connection_closed(bounded: LiveServer) -> None:
    began = time.monotonic()
    with socket.create_connection(address(bounded), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
        data = read_until_closed(sock, HEADERS_S + 10)
    elapsed = time.monotonic() - began
    status, headers, body = parse_response(data)
    assert status == 408 and headers["connection"] == "close", data
    assert json.loads(body)["error"] == "timeout", body
    assert HEADERS_S * 0.9 <= elapsed < HEADERS_S + 5, f"closed after {elapsed:.2f} s, the deadline is {HEADERS_S} s"


def read_response(sock: socket.socket, timeout_s: float = 10) -> tuple[int, bytes]:
    """(status, body) of one response with a Content-Length, leaving the connection open."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection; got {data!r}"
        data += chunk
    status, headers, body = parse_response(data)
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection; got {data!r}"
        body += chunk
    return status, body


def test_an_idle_keep_alive_connection_is_not_cut_by_the_header_deadline(bounded: LiveServer) -> None:
    """The deadline runs from a request's first byte: the wait between requests is keep-alive's to time."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(address(bounded), timeout=10) as sock:
        sock.sendall(request)
        assert read_response(sock)[0] == 200
        time.sleep(HEADERS_S * 1.5)  # under timeout_keep_alive_s (5 s)
        sock.sendall(request)
        assert read_response(sock)[0] == 200, "the same connection answers a second request"


def test_a_body_that_stops_half_way_gets_408_json(bounded: LiveServer) -> None:
    began = time.monotonic()
    with socket.create_connection(address(bounded), timeout=10) as sock:
        sock.sendall(upload_head() + b"\xff" * 1000)
        data = read_until_closed(sock, BODY_S + 10)
    elapsed = time.monotonic() - began
    status, headers, body = parse_response(data)
    assert status == 408 and headers["content-type"] == "application/json", data
    assert json.loads(body)["error"] == "timeout" and f"{BODY_S:g} s" in json.loads(body)["detail"], body
    assert BODY_S * 0.9 <= elapsed < BODY_S + 5, f"answered after {elapsed:.2f} s, the deadline is {BODY_S} s"


def closed_by_server(selector: selectors.BaseSelector) -> list[socket.socket]:
    """The registered sockets that reached end of stream (a 408 first or nothing) in this round."""
    closed = []
    for key, _ in selector.select(timeout=0.05):
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        try:
            if sock.recv(65536) == b"":
                closed.append(sock)
        except BlockingIOError:
            pass
        except ConnectionResetError:
            closed.append(sock)
    return closed


def test_a_flood_of_idle_sockets_is_shed_and_healthz_still_answers(bounded: LiveServer) -> None:
    """FLOOD sockets that send nothing, held open here: the server closes them (beyond twice
    max_connections at once, the rest at the header deadline), answers /healthz within seconds,
    and its descriptors (this process's, minus the flood's own ends) stay under the cap."""
    before = open_fds()
    cap = HARD_CAP_FACTOR * MAX_CONNECTIONS
    with ExitStack() as stack, selectors.DefaultSelector() as selector:
        flood = [stack.enter_context(socket.create_connection(address(bounded), timeout=10)) for _ in range(FLOOD)]
        for sock in flood:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_on_server = {sock.fileno() for sock in flood}
        deadline = time.monotonic() + HEADERS_S + 5
        healthz_after_s: float | None = None
        most_server_fds = 0
        began = time.monotonic()
        while (open_on_server or healthz_after_s is None) and time.monotonic() < deadline:
            most_server_fds = max(most_server_fds, open_fds() - before - FLOOD)
            for sock in closed_by_server(selector):
                open_on_server.discard(sock.fileno())
                selector.unregister(sock)
            if healthz_after_s is None:
                try:
                    if httpx.get(bounded.url("/healthz"), timeout=2).status_code == 200:
                        healthz_after_s = time.monotonic() - began
                except httpx.TransportError:
                    pass  # closed unread while the flood holds the cap: retried
        assert not open_on_server, f"{len(open_on_server)} of {FLOOD} idle sockets still open on the server"
        assert healthz_after_s is not None, "/healthz did not answer 200 during the flood"
        assert most_server_fds <= cap + FD_SLACK, f"the server held {most_server_fds} descriptors for {FLOOD} idle sockets"
    assert httpx.get(bounded.url("/healthz"), timeout=5).status_code == 200


def test_a_client_gone_mid_upload_leaves_no_traceback(bounded: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bev_service.service.middleware")
    with captured_records("uvicorn", level=None) as uvicorn_records:
        with socket.create_connection(address(bounded), timeout=10) as sock:
            sock.sendall(upload_head() + b"\xff" * 1000)
            time.sleep(0.2)  # the route is reading the form
        deadline = time.monotonic() + 5
        while not any("disconnected" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # anything logged after the debug line too
    records = caplog.records + uvicorn_records
    noisy = [(r.name, r.getMessage()) for r in records if r.exc_info or r.levelno >= logging.WARNING]
    assert noisy == [], noisy
    assert any("disconnected" in r.getMessage() for r in caplog.records), "the disconnect is logged at debug"


# -- the stream -------------------------------------------------------------------------------------


def closed_with(ws: ClientConnection, timeout_s: float = 30) -> tuple[int, str]:
    """(code, reason) of the close the server sends next."""
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=timeout_s)
    assert closed.value.rcvd is not None, "the server closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def served(ws: ClientConnection) -> dict[str, Any]:
    """The error reply to a message of the wrong shape: proof of a session reading messages (a
    refused connection is closed before its first message is read)."""
    ws.send(msgpack.packb([1, 2], use_bin_type=True))
    reply = msgpack.unpackb(ws.recv(timeout=30), raw=False)
    assert reply["kind"] == "bad_frame", reply
    return reply


def test_streams_beyond_max_streams_are_closed_with_1013(bounded: LiveServer) -> None:
    with ExitStack() as stack:
        first = [stack.enter_context(connect(bounded.ws_url, open_timeout=30)) for _ in range(MAX_STREAMS)]
        for ws in first:
            served(ws)
        with connect(bounded.ws_url, open_timeout=30) as extra:
            code, reason = closed_with(extra)
        assert code == 1013 and "max_streams" in reason and str(MAX_STREAMS) in reason, (code, reason)
    deadline = time.monotonic() + 5  # closed streams give their slots back
    while True:
        with connect(bounded.ws_url, open_timeout=30) as ws:
            try:
                served(ws)
                break
            except ConnectionClosed:
                assert time.monotonic() < deadline, "the slots of closed streams were not given back"
        time.sleep(0.1)


def test_an_idle_stream_is_closed_with_1001(bounded: LiveServer) -> None:
    with connect(bounded.ws_url, open_timeout=30) as ws:
        served(ws)
        for _ in range(2):  # a stream that sends stays open past the idle timeout
            time.sleep(IDLE_S * 0.6)
            served(ws)
        went_quiet = time.monotonic()
        code, reason = closed_with(ws, timeout_s=IDLE_S + 10)
    elapsed = time.monotonic() - went_quiet
    assert code == 1001 and "idle" in reason, (code, reason)
    assert IDLE_S * 0.9 <= elapsed < IDLE_S + 5, f"closed {elapsed:.2f} s after the last message, the timeout is {IDLE_S} s"


STREAM = Subprotocol("bev.v1")


def token_protocol(token: str) -> Subprotocol:
    """The subprotocol a browser sends its token as: base64url of its UTF-8 bytes, no padding."""
    return Subprotocol("bev-token." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("="))


def test_the_stream_takes_its_token_as_header_subprotocol_or_query(guarded: LiveServer) -> None:
    with connect(guarded.ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, open_timeout=30) as ws:
        served(ws)
    with connect(guarded.ws_url, subprotocols=[STREAM, token_protocol(TOKEN)], open_timeout=30) as ws:
        assert ws.subprotocol == "bev.v1", "the service answers bev.v1, never the token's subprotocol"
        served(ws)
    with connect(guarded.ws_url + f"?token={TOKEN}", open_timeout=30) as ws:
        served(ws)
    with connect(guarded.ws_url, subprotocols=[STREAM, token_protocol("wrong")], open_timeout=30) as ws:
        code, reason = closed_with(ws)
    assert code == 1008 and "token" in reason, (code, reason)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured_records(*names: str, level: int | None = logging.INFO) -> Iterator[list[logging.LogRecord]]:
    """The records that reach these loggers' handlers. Logger levels are process-wide and set by the
    latest server configured, so ``level`` (unless None) holds while capturing."""
    handler = Collect()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if level is not None:
            logger.setLevel(level)
    try:
        yield handler.records
    finally:
        for logger, before in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(before)


def test_the_logs_never_show_the_token(guarded: LiveServer) -> None:
    with captured_records("uvicorn.access", "uvicorn.error") as records:
        assert httpx.get(guarded.url(f"/v1/model?token={TOKEN}"), timeout=10).status_code == 401
        with connect(guarded.ws_url + f"?token={TOKEN}", open_timeout=30) as ws:
            served(ws)
    lines = [r.getMessage() for r in records]
    assert any("/v1/model?token=[redacted]" in line for line in lines), lines
    assert any("/v1/stream?token=[redacted]" in line for line in lines), lines
    assert not [line for line in lines if TOKEN in line], lines
