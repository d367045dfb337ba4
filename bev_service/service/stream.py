"""WebSocket ``/v1/stream``: msgpack frame sets in, grids out; the latest frame set wins.

A client sends ``{"seq": int, "stamp": float, "images": {camera: encoded image}, "rig": id (optional),
"camera_labels": bool (optional)}`` as binary messages and gets ``{"seq", "stamp", "grid": PNG bytes,
"timing_ms", "dropped", "rig", "rows", "cols"}`` back (with ``"camera_labels": {camera: PNG bytes}``, the
label maps the grid was warped from, when asked), or ``{"seq", "error"}`` for a frame set it cannot use. Per connection at most
one frame set is computed and one waits; a newer one replaces the waiting one and the replaced one
is counted in ``dropped``: a client sending faster than the network gets fresh results, never a backlog.

Error replies carry the same ``kind`` as the REST error for the same input (``service/errors.py``).
The token goes as ``Authorization: Bearer``, as the subprotocol ``bev-token.<base64url token>``
offered beside ``bev.v1`` (browsers, which cannot set headers; the service answers ``bev.v1``), or
as ``?token=``. Closes: 1001 for a session that sent nothing for ``ws_idle_timeout_s``, 1003 for a
text frame, 1007 for bytes that are not msgpack, 1008 for a missing or wrong token, 1009 for a
message over the size limit, 1013 while the service is not ready or already serves ``max_streams``
sessions. The route is in ``routers/stream.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

import msgpack
from fastapi import WebSocket
from starlette.types import Message
from starlette.websockets import WebSocketState

from bev_service.errors import BevError, FrameError
from bev_service.service.errors import CLOSE_GOING_AWAY, CLOSE_INVALID, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED, StreamClose, describe
from bev_service.service.state import ServiceState, encode_camera_labels

log = logging.getLogger(__name__)


@dataclass
class FrameSetMessage:
    seq: int
    stamp: float | None
    images: dict[str, bytes]
    rig: str | None
    camera_labels: bool = False  # send each camera's label map with the grid


def parse_message(data: bytes, max_bytes: int, max_cameras: int) -> FrameSetMessage | tuple[Any, str]:
    """A frame set, or (seq if any, what is wrong) for a well-formed message of the wrong shape.
    Raises ``StreamClose`` for what is not a msgpack message at all."""
    if len(data) > max_bytes:
        raise StreamClose(CLOSE_TOO_BIG, f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        # TypeError: a map keyed by a map or an array (unhashable in Python)
        raise StreamClose(CLOSE_INVALID, f"not a msgpack message: {type(exc).__name__}: {exc}"[:120]) from exc
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
    if len(images) > max_cameras:
        return seq, f"{len(images)} images; at most {max_cameras} cameras"
    for name, value in images.items():
        if not isinstance(name, str) or not isinstance(value, bytes):
            return seq, f"images[{name!r}] must be encoded image bytes (msgpack bin) keyed by camera name"
    camera_labels = obj.get("camera_labels", False)
    if not isinstance(camera_labels, bool):
        return seq, "camera_labels must be true or false"
    unknown = sorted(set(obj) - {"seq", "stamp", "images", "rig", "camera_labels"})
    if unknown:
        log.debug("ignoring frame set keys %s", unknown)
    stamped = float(stamp) if stamp is not None else None
    return FrameSetMessage(seq=seq, stamp=stamped, images=images, rig=rig, camera_labels=camera_labels)


class StreamSlots:
    """The sessions one app has open, against its ``max_streams``. An app's sessions all run on its
    event loop, so counting needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        assert self.open > 0, "a slot given back that was never taken"
        self.open -= 1


_SLOTS: weakref.WeakKeyDictionary[ServiceState, StreamSlots] = weakref.WeakKeyDictionary()


def stream_slots(state: ServiceState) -> StreamSlots:
    """The app's ``StreamSlots`` (made on its first stream; gone with the app)."""
    slots = _SLOTS.get(state)
    if slots is None:
        slots = _SLOTS[state] = StreamSlots(state.settings.max_streams)
    return slots


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
        settings = self.state.settings
        try:
            while True:
                message = await self.receive(settings.ws_idle_timeout_s)
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is None:
                    raise StreamClose(CLOSE_UNSUPPORTED, "text frames are not supported: send msgpack binary frames")
                parsed = parse_message(message["bytes"], settings.ws_max_message_bytes, settings.max_cameras)
                if isinstance(parsed, tuple):
                    # A message of the wrong shape is the stream's malformed frame set: REST's bad_frame.
                    self.state.metrics.frame_set_refused("stream")
                    await self.send(describe(FrameError(parsed[1])).stream_message(parsed[0]))
                    continue
                if self.pending is not None:
                    self.dropped += 1
                    self.state.metrics.dropped.inc()
                self.pending = parsed
                self.wake.set()
        finally:
            self.closed = True
            self.wake.set()

    async def receive(self, idle_timeout_s: float) -> Message:
        """The next message; ``StreamClose`` (1001) when none comes within ``idle_timeout_s``: an idle
        session would otherwise hold its slot and its socket for as long as the client likes."""
        try:
            async with asyncio.timeout(idle_timeout_s):
                return await self.ws.receive()
        except TimeoutError:
            reason = f"no message for {idle_timeout_s:g} s (ws_idle_timeout_s): closing an idle stream"
            raise StreamClose(CLOSE_GOING_AWAY, reason) from None

    async def compute_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.closed:
                return
            job, self.pending = self.pending, None
            if job is None:
                continue
            try:
                await self._answer(job)
            except Exception:  # a bug costs this frame set, never the session or the process
                log.exception("stream frame set %s failed", job.seq)
                await self.send({"seq": job.seq, "error": "internal error", "kind": "internal"})

    async def _answer(self, job: FrameSetMessage) -> None:
        engine, store, metrics = self.state.engine, self.state.store, self.state.metrics
        assert engine is not None and store is not None
        began = time.perf_counter()
        try:
            entry = store.get(job.rig)
            result = await engine.infer(entry, job.images)
        except BevError as exc:
            if isinstance(exc, FrameError):
                metrics.frame_set_refused("stream")
            await self.send(describe(exc).stream_message(job.seq))
            return
        metrics.frame_set_answered("stream", result.timings_ms, began)
        self.state.publish(entry.rig, job.images, result, job.stamp)
        rows, cols = result.grid.shape
        reply = {
            "seq": job.seq,
            "stamp": job.stamp,
            "grid": result.encoded,
            "timing_ms": result.timings_ms,
            "dropped": self.dropped,
            "rig": entry.rig_id,
            "rows": rows,
            "cols": cols,
        }
        if job.camera_labels:
            reply["camera_labels"] = await asyncio.to_thread(encode_camera_labels, entry.rig, result)
        await self.send(reply)
