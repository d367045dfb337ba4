"""``bev replay --engine ray``: recordings cut into shards of (recording, time window), replayed on a Ray Data actor
pool, written here by the writers of the local engine.

    driver (this process)                          actors (anywhere on the cluster), one BevPipeline each
    open each recording's index, its output   ->   shard rows: (recording, shard, [t0, t1) of log time)
    skip outputs already complete                  replay_shard's frame sets, skipped frame sets, or its error
    write rows in order (preserve_order)      <-   one row per frame set, then one closing row per shard

Grids travel as bytes and are written by ``outputs.output_for``, so a recording replayed here holds the same grids,
byte for byte, as one replayed by the local engine. A shard that fails is caught in its actor and reported with its
recording and window; the other shards and recordings complete. Ray is imported only when this engine runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bev_service.errors import BevError, RecordingError
from bev_service.geometry.rig import Rig
from bev_service.recordings.outputs import Output, PngOutput
from bev_service.recordings.replay import RecordingSummary, ReplayOptions
from bev_service.recordings.sources import Recording, open_recording
from bev_service.recordings.sync import SkippedFrameSet
from bev_service.runtime.ray_env import ray_environment

log = logging.getLogger(__name__)

DEFAULT_SHARD_SECONDS = 30.0
FRAME, SKIPPED, END, ERROR = "frame", "skipped", "end", "error"  # the kinds of result rows
ROWS_PER_BLOCK = 16  # result rows an actor hands over at a time (a 400x400 grid is 160 kB)


@dataclass(frozen=True)
class PipelineSpec:
    """What each actor builds its pipeline from: the model file (every node reads it at the same path) and the rig."""

    model: Path
    rig: Rig
    backend: str = "auto"
    device: str | None = None  # None: the backend's choice; "cuda" on GPU actors


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # an existing cluster ("auto", "host:6379"); None: a local runtime for the run
    workers: int | None = None  # actors, each holding one pipeline; None: one per CPU (per GPU) of the cluster
    shard_seconds: float = DEFAULT_SHARD_SECONDS
    gpus_per_worker: float = 0.0  # > 0: GPU actors, the pipeline on "cuda"

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if not self.shard_seconds > 0:
            raise ValueError(f"shard_seconds must be positive, got {self.shard_seconds}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be 0 or more, got {self.gpus_per_worker}")


@dataclass
class RayRun:
    """What a run took beside its summaries: Ray's start-up and each actor's pipeline load, for reports and benches."""

    runtime_start_s: float = 0.0  # ray.init (a local runtime started, or the connection to a cluster)
    pipeline_load_s: dict[str, float] = field(default_factory=dict)  # worker -> seconds its pipeline took to load
    shards: int = 0
    workers_used: set[str] = field(default_factory=set)
    first_shard_at: float | None = None  # time.time() when the first shard began: the pool was up


# --- actors ----------------------------------------------------------------------------------------


def result_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("recording", pa.int64()),
            pa.field("shard", pa.int64()),
            pa.field("kind", pa.string()),
            pa.field("worker", pa.string()),  # node id (short) and process id of the actor
            pa.field("time_ns", pa.int64()),
            pa.field("capture_time_ns", pa.map_(pa.string(), pa.int64())),
            pa.field("timings_ms", pa.map_(pa.string(), pa.float64())),
            pa.field("grid", pa.binary()),
            pa.field("grid_shape", pa.list_(pa.int64())),
            pa.field("skipped", pa.string()),  # a SkippedFrameSet as JSON
            pa.field("already_written", pa.int64()),  # on the closing row: frame sets passed over as written
            pa.field("error", pa.string()),
            pa.field("load_s", pa.float64()),  # on the closing row: the actor's pipeline load
            pa.field("started_at", pa.float64()),  # on the closing row: when the shard began (time.time())
        ]
    )


class ShardReplayer:
    """A Ray Data actor: one pipeline, built once, replays shard after shard (``map_batches`` over shard rows)."""

    def __init__(
        self, spec: PipelineSpec, recordings: Sequence[Recording], written_ns: Sequence[Sequence[int]], options: ReplayOptions
    ) -> None:
        start = time.perf_counter()  # the imports are part of the load: torch's takes seconds
        import ray

        from bev_service.runtime.pipeline import BevPipeline
        from bev_service.runtime.segmenter import load_segmenter

        segmenter = load_segmenter(spec.model, backend=spec.backend, device=spec.device)
        self.pipeline = BevPipeline(spec.rig, segmenter, encoder=None)
        self.load_s = time.perf_counter() - start
        self.recordings, self.options = list(recordings), options
        self.written_ns = [frozenset(w) for w in written_ns]  # per recording: frame sets an earlier run wrote (PNG)
        self.worker = f"{ray.get_runtime_context().get_node_id()[:12]}:{os.getpid()}"

    def __call__(self, batch: Any) -> Iterator[Any]:
        """The rows of each shard in ``batch``, ``ROWS_PER_BLOCK`` at a time: a long shard streams to the driver."""
        import pyarrow as pa

        schema, rows = result_schema(), []
        for shard in batch.to_pylist():
            for row in self._replay(shard):
                rows.append(row)
                if len(rows) == ROWS_PER_BLOCK:
                    yield pa.Table.from_pylist(rows, schema=schema)
                    rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=schema)

    def _replay(self, shard: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from bev_service.recordings.replay import iter_shard

        recording = self.recordings[shard["recording"]]
        done_ns = self.written_ns[shard["recording"]]
        passed_over = 0

        def done(time_ns: int) -> bool:
            nonlocal passed_over
            passed_over += time_ns in done_ns
            return time_ns in done_ns

        key = {"recording": shard["recording"], "shard": shard["shard"], "worker": self.worker}
        closing = {"load_s": self.load_s, "started_at": time.time()}
        try:
            items = iter_shard(
                recording,
                shard["t0_ns"],
                shard["t1_ns"],
                self.pipeline,
                tolerance_ms=self.options.tolerance_ms,
                batch_size=self.options.batch_size,
                done=done if done_ns else None,
            )
            for item in items:
                if isinstance(item, SkippedFrameSet):
                    yield {**key, "kind": SKIPPED, "time_ns": item.time_ns, "skipped": json.dumps(asdict(item))}
                    continue
                grid = np.ascontiguousarray(item.grid, dtype=np.uint8)
                yield {
                    **key,
                    "kind": FRAME,
                    "time_ns": item.time_ns,
                    "capture_time_ns": item.capture_time_ns,
                    "timings_ms": item.timings_ms,
                    "grid": grid.tobytes(),
                    "grid_shape": list(grid.shape),
                }
        except Exception as exc:  # reported with its shard (after the rows it gave); the pool goes on with the others
            log.exception("%s: shard %d failed", recording.path, shard["shard"])
            message = str(exc) if isinstance(exc, BevError) else f"{type(exc).__name__}: {exc}"
            yield {**key, **closing, "kind": ERROR, "error": message}
            return
        yield {**key, **closing, "kind": END, "already_written": passed_over}


# --- the driver ------------------------------------------------------------------------------------


@dataclass
class _Planned:
    """One recording to replay: its output open, its windows, and how its shards came back."""

    summary: RecordingSummary
    recording: Recording
    output: Output
    windows: list[tuple[int | None, int | None]]
    written_ns: list[int]  # frame sets an earlier run wrote (PNG): passed to the actors as done
    ended: int = 0  # shards come back
    errors: list[str] = field(default_factory=list)  # of the shards that failed
    finished: bool = False


def replay_recordings_on_ray(
    paths: Sequence[Path],
    out: Path,
    spec: PipelineSpec,
    options: ReplayOptions | None = None,
    ray_options: RayOptions = RayOptions(),
    *,
    progress: Callable[[int], None] | None = None,
    on_open: Callable[[Recording], None] | None = None,
    run: RayRun | None = None,
) -> list[RecordingSummary]:
    """As ``replay.replay_recordings``, on a Ray cluster (see the module docstring); ``run`` collects start-up costs
    when given."""
    options = options if options is not None else ReplayOptions()
    run = run if run is not None else RayRun()
    summaries, planned = _plan(paths, out, spec.rig, options, ray_options, on_open)
    if not planned:
        return summaries
    ray_environment()
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        start = time.perf_counter()
        ray.init(address=ray_options.address, include_dashboard=False, configure_logging=False, log_to_driver=False)
        run.runtime_start_s = time.perf_counter() - start
    try:
        _execute(planned, spec, options, ray_options, run, progress)
    finally:
        for p in planned:
            _finish(p)
        if started_here:
            ray.shutdown()
    return summaries


def _plan(
    paths: Sequence[Path],
    out: Path,
    rig: Rig,
    options: ReplayOptions,
    ray_options: RayOptions,
    on_open: Callable[[Recording], None] | None,
) -> tuple[list[RecordingSummary], list[_Planned]]:
    """Each recording's summary, and those with work left: opened (index only), windowed, their output checked."""
    from bev_service.recordings.replay import open_output, time_windows, window_ns

    names = [Path(p).stem if Path(p).is_file() else Path(p).name for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RecordingError(f"two recordings are named {twice[0]!r}: their outputs would collide; rename one")
    out.mkdir(parents=True, exist_ok=True)
    summaries, planned = [], []
    for path in paths:
        summary = RecordingSummary(path=Path(path))
        summaries.append(summary)
        try:
            recording = open_recording(summary.path, rig.camera_names, options.topic_map)
            if on_open is not None:
                on_open(recording)
            bounds = window_ns(recording, options.window)
            output = open_output(recording, out, rig, options)
        except BevError as exc:  # as in the local engine: this recording's outcome, not the run's
            summary.error = str(exc)
            log.error("%s: %s", summary.path, exc)
            continue
        if output.complete:
            summary.already_written = -1
            log.info("%s: already written, skipped", recording.name)
            continue
        # Actors on other nodes open the recording by its absolute path (shared storage).
        recording = replace(recording, path=recording.path.resolve())
        windows = time_windows(recording, ray_options.shard_seconds, bounds)
        planned.append(_Planned(summary, recording, output, windows, sorted(_written_pngs(output))))
    return summaries, planned


def _written_pngs(output: Output) -> Iterator[int]:
    """The frame sets an earlier run wrote as PNGs (``<time_ns>.png``); none for the other formats."""
    if isinstance(output, PngOutput) and output.folder.is_dir():
        for png in output.folder.glob("*.png"):
            if png.stem.isdigit():
                yield int(png.stem)


def _shard_rows(planned: Sequence[_Planned]) -> list[dict[str, Any]]:
    return [
        {"recording": index, "shard": shard, "t0_ns": t0, "t1_ns": t1}
        for index, p in enumerate(planned)
        for shard, (t0, t1) in enumerate(p.windows)
    ]


def _execute(
    planned: list[_Planned],
    spec: PipelineSpec,
    options: ReplayOptions,
    ray_options: RayOptions,
    run: RayRun,
    progress: Callable[[int], None] | None,
) -> None:
    """The shards through the actor pool; each row written, in order, as it comes back."""
    import ray
    import ray.data

    rows = _shard_rows(planned)
    run.shards = len(rows)
    gpus = ray_options.gpus_per_worker
    workers = ray_options.workers or _cluster_workers(ray.cluster_resources(), gpus)
    workers = min(workers, len(rows))
    capacity = _cluster_workers(ray.cluster_resources(), gpus)
    if workers > capacity:  # an autoscaling cluster may grow to it; a fixed one never will
        log.warning("%d workers asked for, the cluster holds %d now: the run waits for the rest", workers, capacity)
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars, context.wait_for_min_actors_s)
    # In order, so that each output is written as its rows come; the pool up before the first shard, so that
    # shards spread over every actor; our progress bar rather than Ray's.
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.wait_for_min_actors_s = 600
    ray_data_log = logging.getLogger("ray.data")
    saved_level = ray_data_log.level
    ray_data_log.setLevel(max(saved_level, logging.WARNING))  # its per-run INFO lines would break our progress bar
    try:
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            ShardReplayer,
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={
                "spec": replace(spec, device="cuda") if gpus > 0 and spec.device is None else spec,
                "recordings": [p.recording for p in planned],
                "written_ns": [p.written_ns for p in planned],
                "options": options,
            },
            num_cpus=1,  # decoding the images, and the network on CPU actors
            num_gpus=gpus if gpus > 0 else None,
        )
        batches: Iterable[Any] = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
        for batch in batches:
            for row in batch.to_pylist():
                _take(planned[row["recording"]], row, run, progress)
    except Exception as exc:  # the cluster failed (an actor that cannot start, one lost with its node): what is
        # unfinished is reported with the cause's last line (Ray's messages carry the remote traceback before it)
        lines = str(exc).strip().splitlines() or [""]
        cause = f"{type(exc).__name__}: {lines[-1]}"
        log.error("the run on Ray failed: %s", cause)
        for p in planned:
            if p.ended < len(p.windows) and not p.errors:
                p.errors.append(f"the run on Ray failed: {cause}")
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars, context.wait_for_min_actors_s = saved
        ray_data_log.setLevel(saved_level)


def _cluster_workers(resources: dict[str, float], gpus_per_worker: float) -> int:
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int(resources.get("CPU", 1)))


def _take(p: _Planned, row: dict[str, Any], run: RayRun, progress: Callable[[int], None] | None) -> None:
    """One result row into its recording's output and summary."""
    run.workers_used.add(row["worker"])
    kind, counted = row["kind"], 1
    if kind == FRAME:
        # After a failed shard an MCAP or Parquet output cannot be completed; PNGs are whole one by one, and kept.
        if not p.errors or isinstance(p.output, PngOutput):
            grid = np.frombuffer(row["grid"], dtype=np.uint8).reshape(row["grid_shape"])
            p.output.write(row["time_ns"], dict(row["capture_time_ns"]), dict(row["timings_ms"]), grid)
            p.summary.written += 1
    elif kind == SKIPPED:
        found = json.loads(row["skipped"])
        p.summary.skipped.append(SkippedFrameSet(**{**found, "missing": tuple(found["missing"])}))
    else:
        p.ended += 1
        run.pipeline_load_s[row["worker"]] = row["load_s"]
        run.first_shard_at = min(row["started_at"], run.first_shard_at or row["started_at"])
        counted = row["already_written"] or 0
        p.summary.already_written += counted
        if kind == ERROR:
            t0, t1 = p.windows[row["shard"]]
            cause = f"shard {row['shard'] + 1} of {len(p.windows)} ({_window(p.recording, t0, t1)}) failed: {row['error']}"
            log.error("%s: %s", p.summary.path, cause)
            p.errors.append(cause)
        if p.ended == len(p.windows):
            _finish(p)
    if progress is not None and counted:
        progress(counted)


def _window(recording: Recording, t0: int | None, t1: int | None) -> str:
    def at(t: int | None, open_end: str) -> str:
        return open_end if t is None else f"{(t - recording.start_ns) / 1e9:.3f} s"

    return f"window {at(t0, 'start')} to {at(t1, 'end')}"


def _finish(p: _Planned) -> None:
    """Commit a recording whose shards all came back whole; otherwise report it and remove what it began of an MCAP
    or Parquet output (PNGs stay: each is whole)."""
    if p.finished:
        return
    p.finished = True
    if p.ended == len(p.windows) and not p.errors:
        p.output.commit()
        return
    p.output.abort()
    p.summary.error = "; ".join(p.errors) or "the run ended before all its shards came back"
