"""Camera images to frame sets by capture time: one image per camera within a tolerance of the frame set's time.

A frame set's time is its earliest image's capture time (the anchor). Each camera gives the image nearest after
the anchor when it lies within ``tolerance_ns``; a camera whose next image lies beyond it is *out of tolerance* when
that image is nearer the anchor than to its own successor (it was meant for this frame set, and is dropped with it;
at the end of the stream the camera's shortest interval between images stands in for the successor), else *missing*
(it belongs to a later frame set and waits for it). A frame set with a camera missing or out of
tolerance is reported, with its time and the cameras, and skipped: never filled from another moment.

Streaming: images come in log-time order and wait in per-camera queues sorted by capture time, until images
``horizon_ns`` after the anchor have been seen (or the stream ends), so memory holds about ``horizon_ns`` of images.
An image that arrives after a frame set later than it was decided is counted as late and dropped.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from bev_service.recordings.sources import CameraMessage

DEFAULT_TOLERANCE_MS = 20.0
DEFAULT_HORIZON_NS = 1_000_000_000


@dataclass(frozen=True)
class FrameSet:
    time_ns: int  # the earliest capture time of its images
    images: dict[str, CameraMessage]  # by camera, in rig order


@dataclass(frozen=True)
class SkippedFrameSet:
    time_ns: int
    missing: tuple[str, ...]  # cameras with no image near the time
    out_of_tolerance: dict[str, float] = field(default_factory=dict)  # camera -> its image's offset from the time, ms
    error: str = ""  # complete, but unusable (an image that does not decode, say)

    @property
    def reason(self) -> str:
        parts = [self.error] if self.error else []
        if self.missing:
            parts.append("missing " + ", ".join(self.missing))
        if self.out_of_tolerance:
            parts.append("out of tolerance " + ", ".join(f"{c} ({ms:+.1f} ms)" for c, ms in self.out_of_tolerance.items()))
        return "; ".join(parts)


Grouped = FrameSet | SkippedFrameSet


class FrameSetGrouper:
    """Push camera images in log-time order, take frame sets (and skipped ones) in time order; ``finish`` at the end."""

    def __init__(self, cameras: Sequence[str], *, tolerance_ns: int, horizon_ns: int = DEFAULT_HORIZON_NS) -> None:
        if not cameras:
            raise ValueError("frame sets need at least one camera")
        if tolerance_ns < 0 or horizon_ns <= tolerance_ns:
            raise ValueError(f"need 0 <= tolerance_ns < horizon_ns, got {tolerance_ns} and {horizon_ns}")
        self.cameras = tuple(cameras)
        self.tolerance_ns = tolerance_ns
        self.horizon_ns = horizon_ns
        self._queues: dict[str, list[tuple[int, int, CameraMessage]]] = {c: [] for c in self.cameras}
        self._order = 0  # ties in capture time keep arrival order
        self._latest_ns: int | None = None
        self._last_ns: dict[str, int | None] = dict.fromkeys(self.cameras)  # per camera: its latest image's time
        self._interval_ns: dict[str, int | None] = dict.fromkeys(self.cameras)  # and its shortest interval
        self._decided_ns: int | None = None  # the last frame set's time
        self.late = 0

    @property
    def pending(self) -> int:
        """Images waiting for their frame set to be decided."""
        return sum(len(q) for q in self._queues.values())

    def push(self, message: CameraMessage) -> Iterator[Grouped]:
        if message.camera not in self._queues:
            raise ValueError(f"image of camera {message.camera!r}, not one of {', '.join(self.cameras)}")
        t = message.capture_time_ns
        if self._decided_ns is not None and t <= self._decided_ns:
            self.late += 1
            return
        self._order += 1
        bisect.insort(self._queues[message.camera], (t, self._order, message))
        last, interval = self._last_ns[message.camera], self._interval_ns[message.camera]
        if last is not None and t != last:
            self._interval_ns[message.camera] = abs(t - last) if interval is None else min(interval, abs(t - last))
        self._last_ns[message.camera] = t
        self._latest_ns = t if self._latest_ns is None else max(self._latest_ns, t)
        yield from self._drain(final=False)

    def finish(self) -> Iterator[Grouped]:
        yield from self._drain(final=True)

    def _drain(self, *, final: bool) -> Iterator[Grouped]:
        while True:
            heads = [q[0][0] for q in self._queues.values() if q]
            if not heads:
                return
            anchor = min(heads)
            if not final and (self._latest_ns is None or self._latest_ns < anchor + self.horizon_ns):
                return
            yield self._take(anchor)

    def _meant_for(self, camera: str, anchor: int) -> bool:
        """Whether the camera's next image, beyond tolerance of ``anchor``, is nearer it than the image after (or,
        at the end of the stream, than the camera's shortest interval between images would put that one)."""
        queue = self._queues[camera]
        offset = queue[0][0] - anchor
        if len(queue) >= 2:
            return offset < queue[1][0] - queue[0][0]
        interval = self._interval_ns[camera]
        return interval is not None and 2 * offset < interval

    def _take(self, anchor: int) -> Grouped:
        images: dict[str, CameraMessage] = {}
        missing: list[str] = []
        late: dict[str, float] = {}
        for camera in self.cameras:
            queue = self._queues[camera]
            if queue and queue[0][0] - anchor <= self.tolerance_ns:
                images[camera] = queue.pop(0)[2]
            elif queue and self._meant_for(camera, anchor):
                late[camera] = round((queue.pop(0)[0] - anchor) / 1e6, 3)
            else:
                missing.append(camera)
        self._decided_ns = anchor
        if missing or late:
            return SkippedFrameSet(time_ns=anchor, missing=tuple(missing), out_of_tolerance=late)
        return FrameSet(time_ns=anchor, images=images)


def group_frame_sets(
    messages: Iterable[CameraMessage], cameras: Sequence[str], *, tolerance_ns: int, horizon_ns: int = DEFAULT_HORIZON_NS
) -> Iterator[Grouped]:
    grouper = FrameSetGrouper(cameras, tolerance_ns=tolerance_ns, horizon_ns=horizon_ns)
    for message in messages:
        yield from grouper.push(message)
    yield from grouper.finish()
