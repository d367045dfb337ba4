"""Replaying recorded drives through the in-process pipeline: frame sets of a time window to BEV grids.

``replay_shard(recording, t0_ns, t1_ns, pipeline)`` is the unit of work: the frame sets whose first image (the one
that gives the frame set its time) was logged in [t0_ns, t1_ns), each run through a ``BevPipeline``, and the frame
sets skipped with their reasons. Shards of one recording split it by log time: every frame set falls into exactly
one, whatever its capture stamps say (a sensor clock counting from boot, buffered logging). A worker holding a
pipeline (a Ray actor, say) calls it; ``replay_recordings`` runs whole recordings into outputs on this machine
(``bev replay``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bev_service.errors import BevError, FrameError, RecordingError
from bev_service.geometry.rig import Rig
from bev_service.recordings.outputs import Output, OutputFormat, Provenance, output_for
from bev_service.recordings.sources import Recording, iter_camera_messages, open_recording
from bev_service.recordings.sync import DEFAULT_HORIZON_NS, DEFAULT_TOLERANCE_MS, FrameSet, FrameSetGrouper, SkippedFrameSet
from bev_service.runtime.pipeline import BevPipeline, Decoded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayedFrameSet:
    time_ns: int
    capture_time_ns: dict[str, int]  # per camera, in rig order
    grid: NDArray[np.uint8]  # (rows, cols)
    timings_ms: dict[str, float]


@dataclass
class ShardResult:
    recording: Recording
    t0_ns: int | None
    t1_ns: int | None
    frame_sets: list[ReplayedFrameSet] = field(default_factory=list)
    skipped: list[SkippedFrameSet] = field(default_factory=list)


def iter_shard(
    recording: Recording,
    t0_ns: int | None,
    t1_ns: int | None,
    pipeline: BevPipeline,
    *,
    tolerance_ms: float = DEFAULT_TOLERANCE_MS,
    horizon_ns: int = DEFAULT_HORIZON_NS,
    batch_size: int = 1,
    done: Callable[[int], bool] | None = None,
) -> Iterator[ReplayedFrameSet | SkippedFrameSet]:
    """The frame sets whose first image was logged in [t0_ns, t1_ns) (None: open), replayed or skipped, in time
    order, streamed; ``batch_size`` frame sets share each network call. Frame sets for which ``done(time_ns)`` holds
    are passed over without running the network. Images are read from ``horizon_ns`` (log time) either side of the
    window, so that the frame sets at its edges are complete (the images of a frame set are logged within
    ``horizon_ns`` of each other, as ``FrameSetGrouper`` assumes)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    grouped = _grouped(recording, t0_ns, t1_ns, pipeline.rig.camera_names, round(tolerance_ms * 1e6), horizon_ns, done)
    waiting: list[FrameSet | SkippedFrameSet] = []
    for item in grouped:
        waiting.append(item)
        if sum(isinstance(w, FrameSet) for w in waiting) >= batch_size:
            yield from _replayed(waiting, pipeline)
            waiting = []
    yield from _replayed(waiting, pipeline)


def _grouped(
    recording: Recording,
    t0_ns: int | None,
    t1_ns: int | None,
    cameras: tuple[str, ...],
    tolerance_ns: int,
    horizon_ns: int,
    done: Callable[[int], bool] | None,
) -> Iterator[FrameSet | SkippedFrameSet]:
    """The recording's frame sets (and skipped ones) in the window, less those ``done``."""
    slack = horizon_ns + tolerance_ns
    start = None if t0_ns is None else max(0, t0_ns - slack)
    end = None if t1_ns is None else t1_ns + slack

    def wanted(item: FrameSet | SkippedFrameSet) -> bool:
        if (t0_ns is not None and item.log_time_ns < t0_ns) or (t1_ns is not None and item.log_time_ns >= t1_ns):
            return False
        return isinstance(item, SkippedFrameSet) or done is None or not done(item.time_ns)

    grouper = FrameSetGrouper(cameras, tolerance_ns=tolerance_ns, horizon_ns=horizon_ns)
    for message in iter_camera_messages(recording, start, end):
        yield from filter(wanted, grouper.push(message))
    yield from filter(wanted, grouper.finish())
    if grouper.late:
        log.warning("%s: %d images came after their frame set was decided, dropped", recording.path, grouper.late)
    if grouper.extra:
        log.info("%s: %d images of faster cameras fell between frame sets, passed over", recording.path, grouper.extra)


Window = tuple[float | None, float | None]  # [start, end) in seconds since a recording's first message; None: open
WHOLE: Window = (None, None)


def window_ns(recording: Recording, window: Window) -> tuple[int | None, int | None]:
    """The log-time bounds [t0_ns, t1_ns) of ``window`` in ``recording`` (None: open). RecordingError when the
    recording's index gives no start to count from, or the window starts past the recording's end."""
    start_s, end_s = window
    if window == WHOLE:
        return None, None
    if recording.start_ns == recording.end_ns == 0:
        raise RecordingError(f"{recording.path}: its index gives no start time to place --start/--end from")
    length_s = (recording.end_ns - recording.start_ns) / 1e9
    if start_s is not None and start_s > length_s:
        raise RecordingError(f"{recording.path}: --start {start_s:g} s is past the recording's end ({length_s:.3f} s)")
    t0 = None if start_s is None else recording.start_ns + round(start_s * 1e9)
    t1 = None if end_s is None else recording.start_ns + round(end_s * 1e9)
    return t0, t1


def describe_window(window: Window) -> str:
    """How outputs record ``window``: "all", or its bounds in seconds ("12.5 s to 40 s", "start to 40 s")."""
    start_s, end_s = window
    if window == WHOLE:
        return "all"
    return f"{'start' if start_s is None else f'{start_s:g} s'} to {'end' if end_s is None else f'{end_s:g} s'}"


def time_windows(
    recording: Recording, seconds: float, bounds: tuple[int | None, int | None] = (None, None)
) -> list[tuple[int | None, int | None]]:
    """[t0_ns, t1_ns) log-time windows of about ``seconds`` over the recording's span within ``bounds`` (as
    ``window_ns`` gives them), for ``replay_shard``: the first opens at ``bounds[0]`` and the last closes at
    ``bounds[1]``, so that every frame set in the bounds falls in exactly one window (None: open, so that one
    holds even where the index gives no span)."""
    if not seconds > 0:
        raise ValueError(f"a window lasts a positive number of seconds, got {seconds}")
    t0, t1 = bounds
    lo = recording.start_ns if t0 is None else t0
    hi = recording.end_ns if t1 is None else min(t1, recording.end_ns)
    span_ns = max(0, hi - lo)
    width_ns = max(1, round(seconds * 1e9))
    count = max(1, -(-span_ns // width_ns))  # ceiling division in integers: times near 1e18 ns lose digits as floats
    cuts = [lo + i * span_ns // count for i in range(1, count)]
    return list(zip([t0, *cuts], [*cuts, t1], strict=True))


def _replayed(items: list[FrameSet | SkippedFrameSet], pipeline: BevPipeline) -> Iterator[ReplayedFrameSet | SkippedFrameSet]:
    """The frame sets among ``items`` through the pipeline in one batch, in order with the skipped ones; a frame set
    with an image that does not decode is skipped with the reason."""
    out: list[ReplayedFrameSet | SkippedFrameSet | None] = []
    decoded: list[Decoded] = []
    for item in items:
        if isinstance(item, SkippedFrameSet):
            out.append(item)
            continue
        try:
            decoded.append(pipeline.decode({camera: m.data for camera, m in item.images.items()}))
            out.append(None)  # filled in below
        except FrameError as exc:
            out.append(SkippedFrameSet(time_ns=item.time_ns, missing=(), error=str(exc), log_time_ns=item.log_time_ns))
    results = iter(pipeline.run_decoded(decoded) if decoded else [])
    for item, ready in zip(items, out, strict=True):
        if ready is not None:
            yield ready
            continue
        assert isinstance(item, FrameSet)
        result = next(results)
        yield ReplayedFrameSet(
            time_ns=item.time_ns,
            capture_time_ns={camera: m.capture_time_ns for camera, m in item.images.items()},
            grid=np.asarray(result.grid, dtype=np.uint8),
            timings_ms=dict(result.timings_ms),
        )


def replay_shard(
    recording: Recording,
    t0_ns: int | None,
    t1_ns: int | None,
    pipeline: BevPipeline,
    *,
    tolerance_ms: float = DEFAULT_TOLERANCE_MS,
    batch_size: int = 1,
) -> ShardResult:
    """Every frame set first logged in [t0_ns, t1_ns) replayed (see ``iter_shard``), collected: size shards to fit in
    memory."""
    shard = ShardResult(recording=recording, t0_ns=t0_ns, t1_ns=t1_ns)
    for item in iter_shard(recording, t0_ns, t1_ns, pipeline, tolerance_ms=tolerance_ms, batch_size=batch_size):
        (shard.skipped if isinstance(item, SkippedFrameSet) else shard.frame_sets).append(item)  # type: ignore[arg-type]
    return shard


# --- whole recordings ----------------------------------------------------------------------------


@dataclass
class RecordingSummary:
    path: Path
    written: int = 0
    already_written: int = 0  # frame sets an earlier run wrote (PNG), or the whole output (MCAP, Parquet: -1)
    skipped: list[SkippedFrameSet] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class ReplayOptions:
    fmt: OutputFormat = "mcap"
    model_sha256: str = ""  # recorded with the outputs: a re-run with another model does not take them as done
    topic_map: dict[str, str] | None = None  # camera -> topic where not found by name
    tolerance_ms: float = DEFAULT_TOLERANCE_MS
    batch_size: int = 1  # frame sets per network call
    window: Window = WHOLE  # the part of each recording to replay


def open_output(recording: Recording, out: Path, rig: Rig, options: ReplayOptions) -> Output:
    """``recording``'s output in ``out``, labelled with how it is made (``Provenance``)."""
    provenance = Provenance.of(
        recording.path,
        model_sha256=options.model_sha256,
        rig_fingerprint=rig.fingerprint,
        tolerance_ms=options.tolerance_ms,
        topics=recording.topics,
        window=describe_window(options.window),
    )
    return output_for(options.fmt, out, recording.name, rig, provenance, recording.path)


def replay_recordings(
    paths: Sequence[Path],
    out: Path,
    pipeline: BevPipeline,
    options: ReplayOptions = ReplayOptions(),
    *,
    progress: Callable[[int], None] | None = None,
    on_open: Callable[[Recording], None] | None = None,
) -> list[RecordingSummary]:
    """Each recording replayed whole into ``out``; a recording that fails (unreadable, a camera's topic missing, any
    other ``BevError`` while it runs) gets its error in its summary and the others still run. ``progress`` counts
    frame sets, ``on_open`` sees each recording once its index is read."""
    names = [Path(p).stem if Path(p).is_file() else Path(p).name for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RecordingError(f"two recordings are named {twice[0]!r}: their outputs would collide; rename one")
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for path in paths:
        summary = RecordingSummary(path=Path(path))
        summaries.append(summary)
        try:
            recording = open_recording(summary.path, pipeline.rig.camera_names, options.topic_map)
            if on_open is not None:
                on_open(recording)
            _replay_one(summary, recording, out, pipeline, options, progress)
        except BevError as exc:  # any domain's (a FrameError, a ModelError): this recording's outcome, not the run's
            summary.error = str(exc)
            log.error("%s: %s", summary.path, exc)
    return summaries


def _replay_one(
    summary: RecordingSummary,
    recording: Recording,
    out: Path,
    pipeline: BevPipeline,
    options: ReplayOptions,
    progress: Callable[[int], None] | None,
) -> None:
    t0, t1 = window_ns(recording, options.window)
    output = open_output(recording, out, pipeline.rig, options)
    if output.complete:
        summary.already_written = -1
        log.info("%s: already written, skipped", recording.name)
        return

    def done(time_ns: int) -> bool:
        written = output.done(time_ns)
        if written:
            summary.already_written += 1
            if progress is not None:
                progress(1)
        return written

    items = iter_shard(recording, t0, t1, pipeline, tolerance_ms=options.tolerance_ms, batch_size=options.batch_size, done=done)
    try:
        for item in items:
            if isinstance(item, SkippedFrameSet):
                summary.skipped.append(item)
            else:
                output.write(item.time_ns, item.capture_time_ns, item.timings_ms, item.grid)
                summary.written += 1
            if progress is not None:
                progress(1)
        output.commit()
    except BaseException:
        output.abort()
        raise
