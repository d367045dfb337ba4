"""A live view for Foxglove / Lichtblick: a Foxglove WebSocket server (foxglove-sdk) beside the HTTP service.

Every frame set the service answers (REST and stream alike) is offered to ``FoxglovePublisher.offer``,
which only appends references to a small queue and returns: the request never waits for Foxglove.
One worker thread turns what it takes into messages and logs them. When the worker falls behind, the
oldest waiting frame set is dropped and counted (``bev_foxglove_dropped_total``); a slow Foxglove client
is the SDK's to bound (``CLIENT_BACKLOG`` messages each, the oldest dropped). Nothing is converted for
a topic no client subscribes to, and a frame set is not even queued while no client subscribes to any.

Topics (frames: ``vehicle`` and ``<name>_optical_frame``, see ``bev_service.calib.exchange``):

- ``/bev/grid``: ``foxglove.Grid``, class ids and their colours;
- ``/bev/camera/<name>/image``: ``foxglove.CompressedImage``, the JPEG/PNG bytes as received;
- ``/bev/camera/<name>/calibration``: ``foxglove.CameraCalibration``;
- ``/tf``: ``foxglove.FrameTransforms``, vehicle_from_camera of every camera.

The WebSocket protocol has no latched topics, so transforms and calibrations go out when a rig is first
seen or changes, and again every ``STATIC_PERIOD_S`` while a client subscribes to them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import foxglove
import numpy as np
from foxglove.channels import CameraCalibrationChannel, CompressedImageChannel, FrameTransformsChannel, GridChannel
from foxglove.messages import FrameTransforms
from numpy.typing import NDArray

from bev_service import __version__
from bev_service.geometry.rig import Rig
from bev_service.service.errors import FoxgloveStartError
from bev_service.service.foxglove_messages import (
    calibration_message,
    frame_transform,
    grid_message,
    image_message,
)
from bev_service.service.metrics import Metrics

log = logging.getLogger(__name__)

GRID_TOPIC = "/bev/grid"
TF_TOPIC = "/tf"
STATIC_PERIOD_S = 1.0
CLIENT_BACKLOG = 64  # messages queued per Foxglove client (about a dozen frame sets) before the oldest goes
CLOSE_TIMEOUT_S = 5.0
MAX_STAMP_S = float(2**32)  # foxglove.Timestamp holds unsigned 32-bit seconds

T = TypeVar("T")


def image_topic(camera: str) -> str:
    return f"/bev/camera/{camera}/image"


def calibration_topic(camera: str) -> str:
    return f"/bev/camera/{camera}/calibration"


def _same_rig(a: Rig | None, b: Rig) -> bool:
    """The same cameras, poses and grid (``Rig.fingerprint``, cached: cheap once per rig)."""
    return a is b or (a is not None and a.fingerprint == b.fingerprint)


class DropOldestQueue(Generic[T]):
    """A bounded FIFO for one consumer: ``put`` never blocks; when full, the oldest item goes and is counted."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"expected a queue size >= 1, got {size}")
        self._items: deque[T] = deque()
        self.size = size
        self.dropped = 0
        self.cond = threading.Condition()

    def put(self, item: T) -> bool:
        """Queue ``item``; False when that dropped the oldest one."""
        with self.cond:
            kept = len(self._items) < self.size
            if not kept:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.cond.notify()
        return kept

    def take(self, timeout_s: float) -> T | None:
        """The oldest item, or None when none came within ``timeout_s``."""
        with self.cond:
            if not self._items:
                self.cond.wait(timeout_s)
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class FrameSet:
    """What the worker publishes: references to the answered frame set (nothing copied on the request path)."""

    rig: Rig
    images: Mapping[str, bytes] | None  # the encoded camera images as received; None for label maps (fusion only)
    grid: NDArray[np.uint8]  # (rows, cols) in the grid's picture convention
    stamp_s: float


_Channel = GridChannel | FrameTransformsChannel | CompressedImageChannel | CameraCalibrationChannel


@dataclass
class _CameraChannels:
    image: CompressedImageChannel
    calibration: CameraCalibrationChannel


class FoxglovePublisher:
    """The Foxglove server and its worker. ``start`` binds (``FoxgloveStartError`` when it cannot), ``offer``
    queues a frame set, ``announce`` a rig whose channels and transforms should be there before any frame set."""

    def __init__(self, *, host: str, port: int, metrics: Metrics, queue_size: int = 4) -> None:
        self.host, self.requested_port, self.metrics = host, port, metrics
        self._queue: DropOldestQueue[FrameSet | Rig] = DropOldestQueue(queue_size)
        self._context = foxglove.Context()  # this app's channels only: several apps in one process stay apart
        self._server: foxglove.WebSocketServer | None = None
        self._grid = GridChannel(GRID_TOPIC, context=self._context)
        self._tf = FrameTransformsChannel(TF_TOPIC, context=self._context)
        self._cameras: dict[str, _CameraChannels] = {}
        self._static_rig: dict[str, Rig] = {}  # camera name -> the rig whose pose and calibration it last had
        self._known: Rig | None = None  # the last rig seen by offer: the same one needs no announcing
        self._closing = threading.Event()
        self._worker = threading.Thread(target=self._run, name="bev-foxglove", daemon=True)

    @property
    def port(self) -> int:
        """The port the server listens on (the one picked for port 0)."""
        assert self._server is not None, "start() first"
        return self._server.port

    def subscribed(self, topic: str) -> bool:
        """Whether a Foxglove client subscribes to ``topic`` now."""
        channels: dict[str, _Channel] = {GRID_TOPIC: self._grid, TF_TOPIC: self._tf}
        for name, camera in list(self._cameras.items()):
            channels[image_topic(name)], channels[calibration_topic(name)] = camera.image, camera.calibration
        channel = channels.get(topic)
        return channel is not None and channel.has_sinks()

    def start(self) -> None:
        try:
            self._server = foxglove.start_server(
                name=f"bev-service {__version__}",
                host=self.host,
                port=self.requested_port,
                context=self._context,
                message_backlog_size=CLIENT_BACKLOG,
            )
        except RuntimeError as exc:  # the SDK's FoxgloveError: "Failed to bind port: Address already in use"
            raise FoxgloveStartError(
                f"cannot start the Foxglove server on {self.host}:{self.requested_port}: {exc} "
                "(choose another port with --foxglove-port or BEV_FOXGLOVE_PORT)"
            ) from exc
        self._worker.start()
        log.info("Foxglove server on ws://%s:%d", self.host, self.port)

    def announce(self, rig: Rig) -> None:
        """Advertise ``rig``'s camera topics and publish its transforms and calibrations (off the caller's thread)."""
        self._known = rig
        if not self._queue.put(rig):
            self.metrics.foxglove_dropped.inc()

    def offer(self, rig: Rig, images: Mapping[str, bytes] | None, grid: NDArray[np.uint8], stamp_s: float | None) -> None:
        """Queue an answered frame set for publishing; returns at once. ``stamp_s``: its capture time (epoch
        seconds), else now."""
        if self._closing.is_set() or self._server is None:
            return
        if rig is not self._known:
            self.announce(rig)
        if not self._subscribed(rig):
            return
        if stamp_s is None or not 0 <= stamp_s < MAX_STAMP_S:  # a clock Foxglove's timestamps cannot hold: now
            stamp_s = time.time()
        if not self._queue.put(FrameSet(rig, images, grid, stamp_s)):
            self.metrics.foxglove_dropped.inc()

    def close(self) -> None:
        self._closing.set()
        with self._queue.cond:
            self._queue.cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout=CLOSE_TIMEOUT_S)
        if self._server is not None:
            self._server.stop()

    # -- the worker ------------------------------------------------------------------------------

    def _subscribed(self, rig: Rig) -> bool:
        if self._grid.has_sinks():
            return True
        return any((ch := self._cameras.get(name)) is not None and ch.image.has_sinks() for name in rig.camera_names)

    def _run(self) -> None:
        next_static = time.monotonic() + STATIC_PERIOD_S
        while not self._closing.is_set():
            item = self._queue.take(timeout_s=max(0.0, next_static - time.monotonic()))
            try:
                if isinstance(item, Rig):
                    self._publish_rig(item)
                elif item is not None:
                    self._publish(item)
                if time.monotonic() >= next_static:
                    next_static = time.monotonic() + STATIC_PERIOD_S
                    self._publish_statics(only_subscribed=True)
            except Exception:  # a bug costs a message, never the worker (nor the service)
                log.exception("publishing to Foxglove failed")

    def _publish_rig(self, rig: Rig) -> None:
        changed = [name for name in rig.camera_names if not _same_rig(self._static_rig.get(name), rig)]
        for name in rig.camera_names:
            self._static_rig[name] = rig
            if name not in self._cameras:
                self._cameras[name] = _CameraChannels(
                    CompressedImageChannel(image_topic(name), context=self._context),
                    CameraCalibrationChannel(calibration_topic(name), context=self._context),
                )
        if changed:
            self._publish_statics(only_subscribed=False)

    def _publish_statics(self, *, only_subscribed: bool) -> None:
        now = time.time()
        if not only_subscribed or self._tf.has_sinks():
            transforms = [frame_transform(rig.camera(name), now) for name, rig in self._static_rig.items()]
            self._tf.log(FrameTransforms(transforms=transforms))
        for name, rig in self._static_rig.items():
            channel = self._cameras[name].calibration
            if channel.has_sinks():
                channel.log(calibration_message(rig.camera(name), now))

    def _publish(self, frames: FrameSet) -> None:
        if any(not _same_rig(self._static_rig.get(name), frames.rig) for name in frames.rig.camera_names):
            self._publish_rig(frames.rig)  # its announcement was dropped from a full queue
        if self._grid.has_sinks():
            self._grid.log(grid_message(frames.grid, frames.rig.grid, frames.stamp_s))
        for name, data in (frames.images or {}).items():
            channels = self._cameras.get(name)
            if channels is not None and channels.image.has_sinks() and (message := image_message(name, data, frames.stamp_s)):
                channels.image.log(message)
        self.metrics.foxglove_published.inc()
