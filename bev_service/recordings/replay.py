"""Replaying recorded drives through the in-process pipeline: frame sets of a time window to BEV grids.

``replay_shard(recording, t0_ns, t1_ns, pipeline)`` is the unit of work: the frame sets whose time lies in
[t0_ns, t1_ns), each run through a ``BevPipeline``, and the frame sets skipped with their reasons. Shards of one
recording split it by time: every frame set falls into exactly one. A worker holding a pipeline (a Ray actor, say)
calls it; ``replay_recordings`` runs whole recordings into outputs on this machine (``bev replay``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bev_service.errors import FrameError, RecordingError
from bev_service.recordings.outputs import OutputFormat, Provenance, output_for
from bev_service.recordings.sources import Recording, iter_camera_messages, open_recording
from bev_service.recordings.sync import DEFAULT_HORIZON_NS, DEFAULT_TOLERANCE_MS, FrameSet, FrameSetGrouper, SkippedFrameSet
from bev_service.runtime.pipeline import BevPipeline

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
    done: Callable[[int], bool] | None = None,
) -> Iterator[ReplayedFrameSet | SkippedFrameSet]:
    """The frame sets of [t0_ns, t1_ns) (None: open), replayed or skipped, in time order, streamed. Frame sets for
    which ``done(time_ns)`` holds are passed over without running the network. Images are read from ``horizon_ns``
    (log time) either side of the window, so that the frame sets at its edges are complete (when images are logged
    within ``horizon_ns`` of their capture)."""
    slack = horizon_ns + round(tolerance_ms * 1e6)
    start = None if t0_ns is None else max(0, t0_ns - slack)
    end = None if t1_ns is None else t1_ns + slack
    grouper = FrameSetGrouper(pipeline.rig.camera_names, tolerance_ns=round(tolerance_ms * 1e6), horizon_ns=horizon_ns)
    for message in iter_camera_messages(recording, start, end):
        for grouped in grouper.push(message):
            yield from _in_window(grouped, t0_ns, t1_ns, pipeline, done)
    for grouped in grouper.finish():
        yield from _in_window(grouped, t0_ns, t1_ns, pipeline, done)
    if grouper.late:
        log.warning("%s: %d images came after their frame set was decided, dropped", recording.path, grouper.late)


def _in_window(
    grouped: FrameSet | SkippedFrameSet,
    t0_ns: int | None,
    t1_ns: int | None,
    pipeline: BevPipeline,
    done: Callable[[int], bool] | None,
) -> Iterator[ReplayedFrameSet | SkippedFrameSet]:
    if (t0_ns is not None and grouped.time_ns < t0_ns) or (t1_ns is not None and grouped.time_ns >= t1_ns):
        return
    if isinstance(grouped, SkippedFrameSet):
        yield grouped
    elif done is None or not done(grouped.time_ns):
        yield _replayed(grouped, pipeline)


def time_windows(recording: Recording, seconds: float) -> list[tuple[int | None, int | None]]:
    """[t0_ns, t1_ns) windows of about ``seconds`` over the recording's span, for ``replay_shard``: the first opens
    at None and the last closes at None, so that every frame set falls in exactly one window whatever its capture
    time (stamps need not agree with the log times the span is measured in)."""
    if not seconds > 0:
        raise ValueError(f"a window lasts a positive number of seconds, got {seconds}")
    span_ns = max(0, recording.end_ns - recording.start_ns)
    count = max(1, math.ceil(span_ns / (seconds * 1e9)))
    cuts = [recording.start_ns + round(i * span_ns / count) for i in range(1, count)]
    return list(zip([None, *cuts], [*cuts, None], strict=True))


def _replayed(frame_set: FrameSet, pipeline: BevPipeline) -> ReplayedFrameSet | SkippedFrameSet:
    try:
        result = pipeline.run({camera: m.data for camera, m in frame_set.images.items()})
    except FrameError as exc:
        return SkippedFrameSet(time_ns=frame_set.time_ns, missing=(), error=str(exc))
    return ReplayedFrameSet(
        time_ns=frame_set.time_ns,
        capture_time_ns={camera: m.capture_time_ns for camera, m in frame_set.images.items()},
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
) -> ShardResult:
    """Every frame set of [t0_ns, t1_ns) replayed (see ``iter_shard``), collected: size shards to fit in memory."""
    shard = ShardResult(recording=recording, t0_ns=t0_ns, t1_ns=t1_ns)
    for item in iter_shard(recording, t0_ns, t1_ns, pipeline, tolerance_ms=tolerance_ms):
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


def replay_recordings(
    paths: Sequence[Path],
    out: Path,
    pipeline: BevPipeline,
    *,
    fmt: OutputFormat = "mcap",
    model_sha256: str = "",
    topic_map: dict[str, str] | None = None,
    tolerance_ms: float = DEFAULT_TOLERANCE_MS,
    progress: Callable[[int], None] | None = None,
    on_open: Callable[[Recording], None] | None = None,
) -> list[RecordingSummary]:
    """Each recording replayed whole into ``out`` in format ``fmt``; a recording that fails (unreadable, a camera's
    topic missing) gets its error in its summary and the others still run."""
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
            _replay_one(summary, out, pipeline, fmt, model_sha256, topic_map, tolerance_ms, progress, on_open)
        except RecordingError as exc:
            summary.error = str(exc)
            log.error("%s", exc)
    return summaries


def _replay_one(
    summary: RecordingSummary,
    out: Path,
    pipeline: BevPipeline,
    fmt: OutputFormat,
    model_sha256: str,
    topic_map: dict[str, str] | None,
    tolerance_ms: float,
    progress: Callable[[int], None] | None,
    on_open: Callable[[Recording], None] | None,
) -> None:
    recording = open_recording(summary.path, pipeline.rig.camera_names, topic_map)
    if on_open is not None:
        on_open(recording)
    provenance = Provenance(model_sha256=model_sha256, rig_fingerprint=pipeline.rig.fingerprint)
    output = output_for(fmt, out, recording.name, pipeline.rig, provenance)
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

    try:
        for item in iter_shard(recording, None, None, pipeline, tolerance_ms=tolerance_ms, done=done):
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
