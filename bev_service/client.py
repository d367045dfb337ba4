"""Python client of the bev service: ``BevClient`` for REST (httpx, blocking) and ``StreamClient`` for the
WebSocket stream (websockets, asyncio, msgpack).

    with BevClient("http://127.0.0.1:8000", token=None) as client:
        reply = client.bev({"front": jpeg, "left": jpeg, "rear": jpeg, "right": jpeg})
        cells = decode_grid_png(client.bev(frames, format="png"))  # (rows, cols) class ids

    async with StreamClient("http://127.0.0.1:8000") as stream:
        await stream.send(0, frames)
        reply = await stream.recv()  # StreamReply(seq=0, grid=PNG bytes, dropped=0, ...)

Every answer of the service that is an error raises ``ServiceError`` (its HTTP status, error kind and
detail; for a stream the service closed, the WebSocket close code). Network failures are left as
they come (``httpx.TransportError``, ``OSError``, ``TimeoutError``): a vehicle stack tells "the
service said no" apart from "the service is not there". There are no retries: a stale BEV grid is
worth less than a fresh request, so the caller decides.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, overload
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgpack
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bev_service.errors import BevError

DEFAULT_URL = "http://127.0.0.1:8000"
STREAM_PATH = "/v1/stream"
REPLY_MAX_BYTES = 16 << 20
Format = Literal["json", "png", "raw"]
_ACCEPT = {"json": "application/json", "png": "image/png", "raw": "application/octet-stream"}


class ServiceError(BevError):
    """The service refused a request: ``status`` is the HTTP status (or the WebSocket close code when
    it closed a stream), ``error`` the kind (``unknown_rig``, ``overloaded``...), ``detail`` its words.
    ``retry_after_s`` is set on a 503 that says when to come back."""

    def __init__(self, status: int, error: str, detail: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}" if detail else f"{status} {error}")
        self.status = status
        self.error = error
        self.detail = detail
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class RawGrid:
    """The ``format="raw"`` reply of ``POST /v1/bev``."""

    cells: NDArray[np.uint8]  # (rows, cols) class ids, 254 ego, 255 unknown
    rig: str


@dataclass(frozen=True)
class StreamReply:
    """One reply of the stream: a grid, or ``error`` for a frame set the service could not use."""

    seq: int
    stamp: float | None = None
    grid: bytes | None = None  # palette PNG of class ids
    timing_ms: dict[str, float] = field(default_factory=dict)
    dropped: int = 0  # frame sets of this connection the service skipped so far (latest wins)
    rig: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys the service added beyond these

    @property
    def ok(self) -> bool:
        return self.error is None

    def cells(self) -> NDArray[np.uint8]:
        """(rows, cols) class ids of the grid; ServiceError for an error reply."""
        if self.grid is None:
            raise ServiceError(0, "no_grid", f"frame set {self.seq} has no grid: {self.error}")
        return decode_grid_png(self.grid)

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> StreamReply:
        known = {"seq", "stamp", "grid", "timing_ms", "dropped", "rig", "error"}
        return cls(
            seq=int(message.get("seq", -1)),
            stamp=message.get("stamp"),
            grid=message.get("grid"),
            timing_ms=dict(message.get("timing_ms") or {}),
            dropped=int(message.get("dropped", 0)),
            rig=message.get("rig"),
            error=None if message.get("error") is None else str(message["error"]),
            extra={k: v for k, v in message.items() if k not in known},
        )


def decode_grid_png(data: bytes) -> NDArray[np.uint8]:
    """A palette (or grey) PNG of class ids to its (rows, cols) ids; the palette's colours are ignored."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"expected a palette or grey PNG of class ids, got mode {image.mode!r}")
        return np.ascontiguousarray(np.asarray(image), dtype=np.uint8)


def _content_type(data: bytes) -> str:
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG"):
        return "image/png"
    return "application/octet-stream"


def _service_error(response: httpx.Response) -> ServiceError:
    return _error_reply(response.status_code, response.reason_phrase, response.content, response.headers.get("Retry-After"))


def _error_reply(status: int, reason: str, body: bytes, retry_after: str | None) -> ServiceError:
    """The service's JSON error body (``{"error", "detail"}``) or, from anything else in front of it
    (a proxy, a server error page), the reason phrase and the start of the body."""
    error, detail = reason.lower().replace(" ", "_") or "error", body[:500].decode("utf-8", "replace")
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        error, detail = str(parsed["error"]), str(parsed.get("detail", ""))
    try:
        retry_after_s = float(retry_after) if retry_after is not None else None
    except ValueError:
        retry_after_s = None
    return ServiceError(status, error, detail, retry_after_s=retry_after_s)


class BevClient:
    """Blocking REST client of one service. ``timeout_s`` bounds each request (connect, read, write);
    keep-alive connections are reused, so keep one client per service and close it (or use ``with``)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _service_error(response)
        return response

    @overload
    def bev(
        self, images: Mapping[str, bytes], *, rig: str | None = ..., format: Literal["json"] = ..., labels: bool = ...
    ) -> dict[str, Any]: ...
    @overload
    def bev(self, images: Mapping[str, bytes], *, rig: str | None = ..., format: Literal["png"], labels: bool = ...) -> bytes: ...
    @overload
    def bev(
        self, images: Mapping[str, bytes], *, rig: str | None = ..., format: Literal["raw"], labels: bool = ...
    ) -> RawGrid: ...

    def bev(
        self, images: Mapping[str, bytes], *, rig: str | None = None, format: Format = "json", labels: bool = False
    ) -> dict[str, Any] | bytes | RawGrid:
        """One frame set (``{camera: encoded image}``) to its BEV grid: the JSON reply (a dict), the
        palette PNG (bytes) or the raw cells. ``labels=True``: the files are per-camera label PNGs
        (class ids) and the service only fuses them."""
        if format not in _ACCEPT:
            raise ValueError(f"format must be json, png or raw, got {format!r}")
        files = [(camera, (camera, data, _content_type(data))) for camera, data in images.items()]
        form = {"rig": rig} if rig is not None else {}
        if labels:
            form["labels"] = "true"
        response = self._request(
            "POST", "/v1/bev", params={"format": format}, files=files, data=form, headers={"Accept": _ACCEPT[format]}
        )
        if format == "json":
            return dict(response.json())
        if format == "png":
            return response.content
        rows, cols = int(response.headers["X-BEV-Rows"]), int(response.headers["X-BEV-Cols"])
        cells = np.frombuffer(response.content, dtype=np.uint8)
        if cells.size != rows * cols:
            raise ServiceError(response.status_code, "bad_reply", f"raw grid of {cells.size} bytes is not {rows} x {cols}")
        return RawGrid(cells=cells.reshape(rows, cols), rig=response.headers.get("X-BEV-Rig", ""))

    def rigs(self) -> Any:
        return self._request("GET", "/v1/rigs").json()

    def rig(self, rig_id: str) -> Any:
        return self._request("GET", f"/v1/rigs/{rig_id}").json()

    def put_rig(self, rig_id: str, yaml_text: str) -> Any:
        """Store (or replace) a rig; the service validates it and swaps it in between requests."""
        headers = {"Content-Type": "application/yaml"}
        return self._request("PUT", f"/v1/rigs/{rig_id}", content=yaml_text.encode(), headers=headers).json()

    def coverage_png(self, rig_id: str) -> bytes:
        return self._request("GET", f"/v1/rigs/{rig_id}/coverage.png").content

    def classes(self) -> Any:
        return self._request("GET", "/v1/classes").json()

    def model(self) -> Any:
        return self._request("GET", "/v1/model").json()

    def metrics(self) -> str:
        return self._request("GET", "/metrics").text

    def ready(self) -> bool:
        """Whether the service has loaded its model and rigs and warmed up (``/readyz`` is 200)."""
        response = self._http.get("/readyz")
        if response.status_code not in (200, 503):
            raise _service_error(response)
        return response.status_code == 200

    def wait_ready(self, timeout_s: float, *, poll_s: float = 0.5) -> bool:
        """Poll ``/readyz`` until it says ready (True) or ``timeout_s`` passes (False); a service that
        does not answer yet (still starting) counts as not ready."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.ready():
                    return True
            except httpx.TransportError:
                pass
            if time.monotonic() + poll_s > deadline:
                return False
            time.sleep(poll_s)


def stream_url(url: str) -> str:
    """The stream's ``ws://`` address from the service's ``http://`` one (or a ``ws://`` address as is);
    a URL without a path gets ``/v1/stream``."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"expected an http(s):// or ws(s):// URL, got {url!r}")
    path = parts.path if parts.path.strip("/") else STREAM_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class StreamClient:
    """The ``/v1/stream`` WebSocket: send frame sets, receive grids, in order of ``seq``. The service
    keeps only the latest pending frame set, so sending faster than it computes skips frames (counted
    in ``StreamReply.dropped``) rather than building a backlog; ``recv`` never sees a reply twice."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        max_reply_bytes: int = REPLY_MAX_BYTES,
    ) -> None:
        self.url = stream_url(url)
        self.token = token
        self.timeout_s = timeout_s
        self.max_reply_bytes = max_reply_bytes
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            # No permessage-deflate: JPEG and PNG payloads do not compress, and deflating them costs CPU on both ends.
            self._ws = await connect(
                self.url,
                additional_headers=headers,
                compression=None,
                open_timeout=self.timeout_s,
                max_size=self.max_reply_bytes,
            )
        except InvalidStatus as exc:
            response = exc.response
            raise _error_reply(
                response.status_code, response.reason_phrase, bytes(response.body or b""), response.headers.get("Retry-After")
            ) from exc

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    def _connection(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("the stream is not open: use 'async with StreamClient(...)' or await open()")
        return self._ws

    async def send(self, seq: int, images: Mapping[str, bytes], stamp: float | None = None, rig: str | None = None) -> None:
        """Send one frame set; ``stamp`` is its capture time (seconds, default now)."""
        message: dict[str, Any] = {"seq": seq, "stamp": time.time() if stamp is None else stamp, "images": dict(images)}
        if rig is not None:
            message["rig"] = rig
        try:
            await self._connection().send(msgpack.packb(message, use_bin_type=True))
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc

    async def recv(self, timeout_s: float | None = None) -> StreamReply:
        """The next reply (a grid or an error for one frame set); ServiceError when the service
        closed the stream, TimeoutError after ``timeout_s`` (default: the client's) without one."""
        try:
            message = await asyncio.wait_for(self._connection().recv(), self.timeout_s if timeout_s is None else timeout_s)
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc
        if isinstance(message, str):
            raise ServiceError(0, "bad_reply", f"expected a binary msgpack reply, got text: {message[:200]!r}")
        reply = msgpack.unpackb(message, raw=False)
        if not isinstance(reply, dict):
            raise ServiceError(0, "bad_reply", f"expected a msgpack map, got {type(reply).__name__}")
        return StreamReply.from_message(reply)


def _closed_error(exc: ConnectionClosed) -> ServiceError:
    close = exc.rcvd or exc.sent
    code = close.code if close is not None else 1006
    return ServiceError(code, "stream_closed", close.reason if close is not None and close.reason else "connection closed")
