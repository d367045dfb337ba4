"""Benchmark: replaying a recorded drive, frame sets per second, in one process and on Ray.

A synthetic drive of the default rig (four 960x640 JPEG cameras, ``bev synth --drive --mcap``) is replayed to
Parquet through the shipped pruned model, as ``bev replay`` runs it:
  local   ``replay_recordings`` in this process (the local engine: one pipeline, torch on every core), after one
          untimed run, timed before and after the Ray runs (the mean is the baseline, so that a change of load
          meets both sides);
  ray-N   ``replay_recordings_on_ray`` on a local Ray runtime, N actors of one CPU each, one pipeline each, shards
          of ``--shard-seconds``.
Ray's start-up is reported apart: the runtime (``ray.init``, once) and each run's actor pool (from the call until
the first shard begins, the pipeline load inside it). ``fps`` of a Ray run counts from its first shard to its last
row (the pool up; each fresh actor's first network calls included); ``fps_end_to_end`` from the call. Ratios are
against the local engine measured in the same run.

Run from the repository root: ``.venv/bin/python -m bench.replay [--frames N] [--workers 1,2] [--quick]``. The last
line printed is one JSON object: ``{"bench": "replay", "local_fps", "ray": {"1": {...}, "2": {...}}, ...}``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import json_line, machine
from bev_service.calib.rigfile import load_rig
from bev_service.cli.main import main as bev
from bev_service.recordings.ray_engine import PipelineSpec, RayOptions, RayRun, replay_recordings_on_ray
from bev_service.recordings.replay import ReplayOptions, replay_recordings
from bev_service.runtime.int8 import file_sha256
from bev_service.runtime.pipeline import BevPipeline
from bev_service.runtime.segmenter import load_segmenter
from bev_service.shipped import DEFAULT_RIG, PRUNED_MODEL

SEED = 100_000  # a held-out world
FPS = 4.0  # recorded frame sets per second of drive


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32, help="frame sets of the drive (default 32)")
    parser.add_argument("--workers", default="1,2", help="Ray actor counts to time (default 1,2)")
    parser.add_argument("--shard-seconds", type=float, default=2.0, help="shard length (default 2 s: 8 frame sets)")
    parser.add_argument("--batch", type=int, default=4, help="frame sets per network call (default 4, as bev replay)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: 8 frame sets at a quarter scale, 0.5 s shards")
    return parser.parse_args(argv)


def write_drive(path: Path, frames: int, quick: bool) -> None:
    scale = ["--scale", "0.25"] if quick else []
    args = ["synth", "--drive", "--frames", str(frames), "--fps", str(FPS), "--seed", str(SEED), "--mcap", str(path)]
    if bev([*args, *scale, "--no-progress"]) != 0:
        raise SystemExit("bev synth could not write the drive")


def time_local(drive: Path, out: Path, options: ReplayOptions) -> tuple[float, float]:
    """Seconds to load the pipeline, and to replay the drive, in this process."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    pipeline = BevPipeline(load_rig(DEFAULT_RIG), load_segmenter(PRUNED_MODEL), encoder=None)
    load_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        [summary] = replay_recordings([drive], out, pipeline, options)
        replay_s = time.perf_counter() - start
    finally:
        pipeline.close()
    assert summary.error is None, summary.error
    return load_s, replay_s


def time_ray(drive: Path, out: Path, options: ReplayOptions, workers: int, shard_seconds: float, frames: int) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    run = RayRun()
    spec = PipelineSpec(model=PRUNED_MODEL, rig=load_rig(DEFAULT_RIG))
    ray_options = RayOptions(workers=workers, shard_seconds=shard_seconds)
    called = time.time()
    [summary] = replay_recordings_on_ray([drive], out, spec, options, ray_options, run=run)
    ended = time.time()
    assert summary.error is None and summary.written == frames, summary
    assert run.first_shard_at is not None
    return {
        "fps": frames / (ended - run.first_shard_at),
        "fps_end_to_end": frames / (ended - called),
        "pool_start_s": run.first_shard_at - called,
        "pipeline_load_s": max(run.pipeline_load_s.values()),
        "shards": run.shards,
        "actors_used": len(run.workers_used),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    frames = 8 if args.quick else args.frames
    shard_seconds = 0.5 if args.quick else args.shard_seconds
    counts = [int(n) for n in args.workers.split(",")]
    logging.basicConfig(level=logging.WARNING)
    import ray

    with tempfile.TemporaryDirectory(prefix="bench-replay-") as scratch:
        root = Path(scratch)
        drive = root / "drive.mcap"
        start = time.perf_counter()
        write_drive(drive, frames, args.quick)
        print(f"drive: {frames} frame sets of the default rig, written in {time.perf_counter() - start:.1f} s", flush=True)
        options = ReplayOptions(fmt="parquet", model_sha256=file_sha256(PRUNED_MODEL), batch_size=args.batch)

        time_local(drive, root / "local", options)  # warm-up: the drive in the page cache, torch's kernels chosen
        load_s, before_s = time_local(drive, root / "local", options)
        cores = len(os.sched_getaffinity(0))
        start = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, configure_logging=False, log_to_driver=False)
        runtime_start_s = time.perf_counter() - start
        try:
            on_ray = {n: time_ray(drive, root / f"ray-{n}", options, n, shard_seconds, frames) for n in counts}
        finally:
            ray.shutdown()
        time.sleep(3.0)  # the runtime's processes exit before the local engine is timed again
        _, after_s = time_local(drive, root / "local", options)

    local_fps = frames / ((before_s + after_s) / 2)
    for figures in on_ray.values():
        figures["speedup"] = figures["fps"] / local_fps
        figures["speedup_end_to_end"] = figures["fps_end_to_end"] / local_fps
    print(f"{'engine':<8}  {'frame sets/s':>12}  {'vs local':>8}  {'end to end':>10}  {'vs local':>8}  {'pool start s':>12}")
    print(f"{'local':<8}  {local_fps:>12.2f}  {1.0:>7.2f}x  {local_fps:>10.2f}  {1.0:>7.2f}x  {'':>12}")
    for n, f in on_ray.items():
        print(
            f"{f'ray-{n}':<8}  {f['fps']:>12.2f}  {f['speedup']:>7.2f}x  {f['fps_end_to_end']:>10.2f}  "
            f"{f['speedup_end_to_end']:>7.2f}x  {f['pool_start_s']:>12.2f}"
        )
    print(
        f"local: {before_s:.2f} s before, {after_s:.2f} s after the Ray runs; pipeline load {load_s:.2f} s. "
        f"Ray: runtime start {runtime_start_s:.2f} s, actor pipeline load "
        + ", ".join(f"{f['pipeline_load_s']:.2f} s ({n} actors)" for n, f in on_ray.items())
    )
    load_1m = os.getloadavg()[0]
    print(f"model: {PRUNED_MODEL.name} (torch); machine: {machine()}; load {load_1m:.2f}")
    figures = {
        "frames": frames,
        "local_fps": local_fps,
        "local_replay_s": [before_s, after_s],
        "local_pipeline_load_s": load_s,
        "ray_runtime_start_s": runtime_start_s,
        "ray": {str(n): f for n, f in on_ray.items()},
        "shard_seconds": shard_seconds,
        "machine": machine(),
        "load_1m": load_1m,
    }
    print(json_line("replay", figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
