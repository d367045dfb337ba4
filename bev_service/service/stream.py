"""WebSocket ``/v1/stream``: msgpack frame sets in, grids out; the latest frame set wins.

A client sends ``{"seq": int, "stamp": float, "images": {camera: encoded image}, "rig": id (optional)}``
as binary messages and gets ``{"seq", "stamp", "grid": PNG bytes, "timing_ms", "dropped", "rig",
"rows", "cols"}`` back, or ``{"seq", "error"}`` for a frame set it cannot use. Per connection at most
one frame set is computed and one waits; a newer one replaces the waiting one and the replaced one
is counted in ``dropped``: a client sending faster than the network gets fresh results, never a backlog.

Closes: 1003 for a text frame, 1007 for bytes that are not msgpack, 1008 for a missing or wrong
token (``?token=`` or ``Authorization: Bearer``), 1009 for a message over the size limit, 1013 while
the service is not ready.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

import msgpack
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from bev_service.errors import BevError, FrameError
from bev_service.service.engine import OverloadedError
from bev_service.service.state import ServiceState

log = logging.getLogger(__name__)

MAX_CAMERAS = 16


@dataclass
class FrameSetMessage:
    seq: int
    stamp: float | None
    images: dict[str, bytes]
    rig: str | None


class StreamClose(Exception):  # noqa: N818 (a close, not an error)
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def parse_message(data: bytes, max_bytes: int) -> FrameSetMessage | tuple[Any, str]:
    """A frame set, or (seq if any, what is wrong) for a well-formed message of the wrong shape.
    Raises ``StreamClose`` for what is not a msgpack message at all."""
    if len(data) > max_bytes:
        raise StreamClose(1009, f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        # TypeError: a map keyed by a map or an array (unhashable in Python)
        raise StreamClose(1007, f"not a msgpack message: {type(exc).__name__}: {exc}"[:120]) from exc
    if not isinstance(obj, dict):
        return None, f"a frame set is a msgpack map with seq, stamp, images; got a {type(obj).__name__}"
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return seq if isinstance(seq, int | float | str) else None, "seq must be an integer"
    stamp = obj.get("stamp")
    if stamp is not None and (not isinstance(stamp, int | float) or isinstance(stamp, bool)):
        return seq, "stamp must be a number (capture time in seconds)"
    rig = obj.get("rig")
    if rig is not None and not isinstance(rig, str):
        return seq, "rig must be a string (a rig id)"
    images = obj.get("images")
    if not isinstance(images, dict) or not images:
        return seq, "images must be a non-empty map of camera name to encoded image bytes"
    if len(images) > MAX_CAMERAS:
        return seq, f"{len(images)} images; at most {MAX_CAMERAS} cameras"
    for name, value in images.items():
        if not isinstance(name, str) or not isinstance(value, bytes):
            return seq, f"images[{name!r}] must be encoded image bytes (msgpack bin) keyed by camera name"
    unknown = sorted(set(obj) - {"seq", "stamp", "images", "rig"})
    if unknown:
        log.debug("ignoring frame set keys %s", unknown)
    return FrameSetMessage(seq=seq, stamp=float(stamp) if stamp is not None else None, images=images, rig=rig)


def _authorised(ws: WebSocket, token: str | None) -> bool:
    if token is None:
        return True
    given = ws.query_params.get("token") or ""
    header = ws.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:].strip()
    return hmac.compare_digest(given.encode(), token.encode())


class StreamSession:
    def __init__(self, ws: WebSocket, state: ServiceState) -> None:
        self.ws, self.state = ws, state
        self.pending: FrameSetMessage | None = None
        self.wake = asyncio.Event()
        self.closed = False
        self.dropped = 0
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            if self.ws.application_state == WebSocketState.CONNECTED:
                await self.ws.send_bytes(msgpack.packb(message, use_bin_type=True))

    async def receive_loop(self) -> None:
        limit = self.state.settings.ws_max_message_bytes
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is None:
                    raise StreamClose(1003, "text frames are not supported: send msgpack binary frames")
                parsed = parse_message(message["bytes"], limit)
                if isinstance(parsed, tuple):
                    self.state.metrics.bad_frames.labels(source="stream").inc()
                    await self.send({"seq": parsed[0], "error": parsed[1]})
                    continue
                if self.pending is not None:
                    self.dropped += 1
                    self.state.metrics.dropped.inc()
                self.pending = parsed
                self.wake.set()
        finally:
            self.closed = True
            self.wake.set()

    async def compute_loop(self) -> None:
        engine, store, metrics = self.state.engine, self.state.store, self.state.metrics
        assert engine is not None and store is not None
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.closed:
                return
            job, self.pending = self.pending, None
            if job is None:
                continue
            began = time.perf_counter()
            try:
                entry = store.get(job.rig)
                result = await engine.infer(entry, job.images)
            except OverloadedError as exc:
                await self.send({"seq": job.seq, "error": f"overloaded: {exc}", "retry_after_s": exc.retry_after_s})
                continue
            except BevError as exc:
                if isinstance(exc, FrameError):
                    metrics.bad_frames.labels(source="stream").inc()
                await self.send({"seq": job.seq, "error": str(exc)})
                continue
            metrics.frames.labels(source="stream").inc()
            metrics.observe_stages(result.timings_ms)
            metrics.request_latency.labels(source="stream").observe(time.perf_counter() - began)
            rows, cols = result.grid.shape
            await self.send(
                {
                    "seq": job.seq,
                    "stamp": job.stamp,
                    "grid": result.encoded,
                    "timing_ms": result.timings_ms,
                    "dropped": self.dropped,
                    "rig": entry.rig_id,
                    "rows": rows,
                    "cols": cols,
                }
            )


def stream_router(state: ServiceState) -> APIRouter:
    router = APIRouter()

    @router.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        if not _authorised(ws, state.settings.api_token):
            await ws.close(1008, "a valid token is required (?token= or Authorization: Bearer)")
            return
        if not state.ready.is_set():
            await ws.close(1013, f"not ready: {state.error or 'loading'}")
            return
        session = StreamSession(ws, state)
        state.metrics.streams.inc()
        receiver = asyncio.create_task(session.receive_loop())
        computer = asyncio.create_task(session.compute_loop())
        try:
            await receiver
        except StreamClose as close:
            session.closed = True
            await ws.close(close.code, close.reason)
        except WebSocketDisconnect:
            pass
        except Exception:  # a bug must cost this connection, never the process
            log.exception("stream connection failed")
            if ws.application_state == WebSocketState.CONNECTED:
                await ws.close(1011, "internal error")
        finally:
            session.closed = True
            session.wake.set()
            try:
                await asyncio.wait_for(computer, timeout=30)
            except (TimeoutError, WebSocketDisconnect, RuntimeError):
                computer.cancel()
            state.metrics.streams.dec()

    return router
