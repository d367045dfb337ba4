"""A real service for tests: ``create_app(Settings(...))`` under uvicorn in a thread, on a loopback
socket bound before the server starts (port 0: no race for a free port), configured as ``bev serve``
configures it (``uvicorn_config``: its limits, timeouts and log level from the settings). Shared by the
service, client and viewer tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI

from bev_service.service.app import create_app
from bev_service.service.server import uvicorn_config
from bev_service.service.settings import Settings

READY_TIMEOUT_S = 180.0


def free_socket() -> socket.socket:
    """A socket bound to a free loopback port (not listening yet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass(frozen=True)
class LiveServer:
    """One running service: where it listens and what it runs with."""

    base_url: str
    settings: Settings
    app: FastAPI

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url.removeprefix("http") + "/v1/stream"

    def url(self, path: str) -> str:
        return self.base_url + path


@contextmanager
def running_server(settings: Settings, *, ready: bool = True, ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[LiveServer]:
    """uvicorn configured as ``bev serve`` configures it, in a daemon thread; stopped on exit. Yields once
    ``/readyz`` says ready, or with ``ready=False`` as soon as the port answers."""
    sock = free_socket()
    port = sock.getsockname()[1]
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, settings))  # host and port unused: it serves ``sock``
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    live = LiveServer(f"http://127.0.0.1:{port}", settings, app)
    try:
        if ready:
            wait_ready(live, thread, ready_timeout_s)
        else:
            deadline = time.monotonic() + ready_timeout_s
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.02)
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down within 30 s"


def wait_ready(live: LiveServer, thread: threading.Thread, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert thread.is_alive(), "the server thread ended during start-up (see the log above)"
        try:
            reply = httpx.get(live.url("/readyz"), timeout=5)
        except httpx.TransportError:
            reply = None
        if reply is not None:
            if reply.status_code == 200:
                return
            assert reply.status_code == 503 and reply.headers.get("retry-after"), reply.text
            assert reply.json()["detail"] == "loading", f"the service failed to load: {reply.text}"
        assert time.monotonic() < deadline, f"{live.url('/readyz')} not 200 within {timeout_s} s"
        time.sleep(0.05)
