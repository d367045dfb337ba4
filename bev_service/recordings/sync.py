"""Camera images to frame sets by capture time: one image per camera within a tolerance of the frame set's time.

Each camera's period is the (lower) median interval between its recent images; the frame-set period is the slowest
camera's. Cameras at least a third faster than that (a 30 Hz camera on a 10 Hz rig, say) are *fast*: they never open
a frame set of their own, and of their images only the one nearest each frame set takes part; the others are
*extras*, counted and passed over. A frame set opens at the earliest image of the other (*pacing*) cameras, or at a
fast camera's image up to ``tolerance_ns`` before it; its time is that earliest image's capture time (the anchor).
Each camera gives its next image when it lies within ``tolerance_ns`` after the anchor. Otherwise that image is *out
of tolerance* when it is nearer the anchor than the next frame set (less than half a frame-set period away: it was
meant for this frame set, and is dropped with it), else the camera is *missing* (the image belongs to a later frame
set and waits for it). A frame set with a camera missing or out of tolerance, or with an image that did not decode (a
``CameraMessage`` with its ``error`` set), is reported, with its time and the cameras, and skipped: never filled from
another moment.

Streaming: images come in the order they were logged (log-time order, or near it) and wait in per-camera queues
sorted by capture time. A frame set is decided once images logged ``horizon_ns`` after its first image was logged
have been seen (or the stream ends), so memory holds about ``horizon_ns`` of images whatever the stamps say: an image
stamped far off the others (a sensor clock reset, say) is reported alone, not taken as a sign that time has moved on
(only where log times are unset, 0, do the stamps stand in for them). An image that arrives after a frame set later
than it was decided is counted as late and dropped.
"""

from __future__ import annotations

import bisect
import statistics
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from bev_service.recordings.sources import CameraMessage

DEFAULT_TOLERANCE_MS = 20.0
DEFAULT_HORIZON_NS = 1_000_000_000
PERIOD_SAMPLES = 15  # recent intervals per camera whose lower median is its period: robust to drops, jitter, strays
FAST_RATIO = 0.75  # a camera whose period is below this fraction of the frame-set period is fast...
FAST_SAMPLES = 4  # ...once it has this many intervals (a short recording's few could mislead)


@dataclass(frozen=True)
class FrameSet:
    time_ns: int  # the earliest capture time of its images
    images: dict[str, CameraMessage]  # by camera, in rig order
    log_time_ns: int = field(default=0, compare=False)  # where that image was logged: which shard a frame set is in


@dataclass(frozen=True)
class SkippedFrameSet:
    time_ns: int
    missing: tuple[str, ...]  # cameras with no image near the time
    out_of_tolerance: dict[str, float] = field(default_factory=dict)  # camera -> its image's offset from the time, ms
    error: str = ""  # complete, but unusable (an image that does not decode, say)
    log_time_ns: int = field(default=0, compare=False)  # as FrameSet's

    @property
    def reason(self) -> str:
        parts = [self.error] if self.error else []
        if self.missing:
            parts.append("missing " + ", ".join(self.missing))
        if self.out_of_tolerance:
            parts.append("out of tolerance " + ", ".join(f"{c} ({ms:+.1f} ms)" for c, ms in self.out_of_tolerance.items()))
        return "; ".join(parts)


Grouped = FrameSet | SkippedFrameSet
Queued = tuple[int, int, CameraMessage]  # capture time, arrival order (ties keep it), the image


class FrameSetGrouper:
    """Push camera images as they were logged, take frame sets (and skipped ones) in time order; ``finish`` at the end."""

    def __init__(self, cameras: Sequence[str], *, tolerance_ns: int, horizon_ns: int = DEFAULT_HORIZON_NS) -> None:
        if not cameras:
            raise ValueError("frame sets need at least one camera")
        if tolerance_ns < 0 or horizon_ns <= tolerance_ns:
            raise ValueError(f"need 0 <= tolerance_ns < horizon_ns, got {tolerance_ns} and {horizon_ns}")
        self.cameras = tuple(cameras)
        self.tolerance_ns = tolerance_ns
        self.horizon_ns = horizon_ns
        self._queues: dict[str, list[Queued]] = {c: [] for c in self.cameras}
        self._order = 0
        self._latest_log_ns: int | None = None
        self._last_ns: dict[str, int | None] = dict.fromkeys(self.cameras)  # per camera: its latest image's time
        self._intervals: dict[str, deque[int]] = {c: deque(maxlen=PERIOD_SAMPLES) for c in self.cameras}
        self._decided_ns: int | None = None  # the last frame set's time
        self.late = 0
        self.extra = 0  # fast cameras' images between frame sets

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
        last = self._last_ns[message.camera]
        if last is not None and t != last:
            self._intervals[message.camera].append(abs(t - last))
        self._last_ns[message.camera] = t
        log_ns = _arrival_ns(message)
        self._latest_log_ns = log_ns if self._latest_log_ns is None else max(self._latest_log_ns, log_ns)
        yield from self._drain(final=False)

    def finish(self) -> Iterator[Grouped]:
        yield from self._drain(final=True)

    def _period_ns(self, camera: str) -> float | None:
        intervals = self._intervals[camera]
        return statistics.median_low(intervals) if intervals else None

    def _frame_period_ns(self) -> float | None:
        """The slowest camera's period: frame sets come no faster than every camera can fill them."""
        periods = [p for p in map(self._period_ns, self.cameras) if p is not None]
        return max(periods) if periods else None

    def _fast_cameras(self, frame_period: float | None) -> set[str]:
        if frame_period is None:
            return set()
        return {
            c
            for c in self.cameras
            if len(self._intervals[c]) >= FAST_SAMPLES and (p := self._period_ns(c)) is not None and p < FAST_RATIO * frame_period
        }

    def _waiting(self, entry: Queued, final: bool) -> bool:
        """Whether images logged within the horizon after ``entry`` may still come."""
        latest = self._latest_log_ns
        return not final and (latest is None or latest < _arrival_ns(entry[2]) + self.horizon_ns)

    def _drain(self, *, final: bool) -> Iterator[Grouped]:
        while True:
            frame_period = self._frame_period_ns()
            fast = self._fast_cameras(frame_period)
            heads = [q[0] for c, q in self._queues.items() if q and c not in fast]
            if not heads:  # only fast cameras have images: extras, once nothing can come to meet them
                self._drop_unmet(fast, final)
                return
            first = min(heads)
            if self._waiting(first, final):
                return
            assert frame_period is not None or not fast
            self._drop_extras(fast, first[0], frame_period or 0.0)
            early = [q[0] for c, q in self._queues.items() if c in fast and q and 0 < first[0] - q[0][0] <= self.tolerance_ns]
            yield self._take(min([first, *early]), frame_period)

    def _drop_extras(self, fast: set[str], reference_ns: int, frame_period: float) -> None:
        """Drop fast cameras' images until each one's first is its nearest to ``reference_ns`` (and not nearer the
        frame set before)."""
        for camera in fast:
            queue = self._queues[camera]
            while queue and (
                2 * (reference_ns - queue[0][0]) >= frame_period
                or (len(queue) >= 2 and abs(queue[1][0] - reference_ns) <= abs(queue[0][0] - reference_ns))
            ):
                queue.pop(0)
                self.extra += 1

    def _drop_unmet(self, fast: set[str], final: bool) -> None:
        for camera in fast:
            queue = self._queues[camera]
            while queue and not self._waiting(queue[0], final):
                queue.pop(0)
                self.extra += 1

    def _take(self, opening: Queued, frame_period: float | None) -> Grouped:
        anchor, log_ns = opening[0], opening[2].log_time_ns
        images: dict[str, CameraMessage] = {}
        missing: list[str] = []
        late: dict[str, float] = {}
        broken: list[str] = []  # images that did not decode
        for camera in self.cameras:
            queue = self._queues[camera]
            offset = queue[0][0] - anchor if queue else None
            if offset is not None and 0 <= offset <= self.tolerance_ns:
                images[camera] = queue.pop(0)[2]
                broken.extend([images[camera].error] if images[camera].error else [])
            elif offset is not None and frame_period is not None and 2 * abs(offset) < frame_period:
                message = queue.pop(0)[2]
                broken.extend([message.error] if message.error else [])
                late[camera] = round(offset / 1e6, 3)
            else:
                missing.append(camera)
        self._decided_ns = anchor
        if missing or late or broken:
            error = "; ".join(broken)
            return SkippedFrameSet(anchor, tuple(missing), out_of_tolerance=late, error=error, log_time_ns=log_ns)
        return FrameSet(time_ns=anchor, images=images, log_time_ns=log_ns)


def _arrival_ns(message: CameraMessage) -> int:
    """When the image came: its log time, or where that is unset (0), its capture time."""
    return message.log_time_ns or message.capture_time_ns


def group_frame_sets(
    messages: Iterable[CameraMessage], cameras: Sequence[str], *, tolerance_ns: int, horizon_ns: int = DEFAULT_HORIZON_NS
) -> Iterator[Grouped]:
    grouper = FrameSetGrouper(cameras, tolerance_ns=tolerance_ns, horizon_ns=horizon_ns)
    for message in messages:
        yield from grouper.push(message)
    yield from grouper.finish()
