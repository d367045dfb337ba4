"""``bev replay --engine ray``: the options of the Ray engine and its run (``bev_service.recordings.ray_engine``).

bev replay drives/*.mcap --out build/replay --engine ray                          # a local Ray runtime, one actor per core
bev replay drives/*.mcap --out /shared/replay --engine ray --address auto --workers 8 --shard-seconds 60
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bev_service.errors import BevError
from bev_service.geometry.rig import Rig
from bev_service.recordings.replay import RecordingSummary, ReplayOptions
from bev_service.recordings.sources import Recording

RAY_ONLY = ("address", "workers", "shard_seconds", "gpus_per_worker")


class RayArgumentError(BevError):
    """Options of ``bev replay --engine ray`` that do not fit together."""


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    from bev_service.recordings.ray_engine import DEFAULT_SHARD_SECONDS

    ray = p.add_argument_group("--engine ray", "shards of (recording, time window) over a pool of Ray actors")
    ray.add_argument(
        "--address",
        help="an existing Ray cluster (auto, or HEAD_HOST:6379); default: a local Ray runtime for the run",
    )
    ray.add_argument("--workers", type=int, help="actors, each holding one pipeline (default: one per CPU of the cluster)")
    ray.add_argument(
        "--shard-seconds",
        type=float,
        help=f"length of a shard, in seconds of recording (default {DEFAULT_SHARD_SECONDS:g})",
    )
    ray.add_argument(
        "--gpus-per-worker",
        type=float,
        help="GPUs each actor holds (e.g. 1 or 0.5); its pipeline then runs on CUDA (default: CPU actors, 1 CPU each)",
    )


def check_ray_args(args: argparse.Namespace) -> None:
    given = [f"--{name.replace('_', '-')}" for name in RAY_ONLY if getattr(args, name) is not None]
    if args.engine != "ray" and given:
        raise RayArgumentError(f"{', '.join(given)} only apply with --engine ray")
    if args.workers is not None and args.workers < 1:
        raise RayArgumentError(f"--workers must be at least 1, got {args.workers}")
    if args.shard_seconds is not None and not args.shard_seconds > 0:
        raise RayArgumentError(f"--shard-seconds must be positive, got {args.shard_seconds}")
    if args.gpus_per_worker is not None and not args.gpus_per_worker > 0:
        raise RayArgumentError(f"--gpus-per-worker must be positive, got {args.gpus_per_worker}")


def run_on_ray(args: argparse.Namespace, rig: Rig, model: Path, options: ReplayOptions) -> list[RecordingSummary]:
    from bev_service.recordings.ray_engine import DEFAULT_SHARD_SECONDS, PipelineSpec, RayOptions, replay_recordings_on_ray

    spec = PipelineSpec(model=Path(model).resolve(), rig=rig, backend=args.backend)
    ray_options = RayOptions(
        address=args.address,
        workers=args.workers,
        shard_seconds=args.shard_seconds or DEFAULT_SHARD_SECONDS,
        gpus_per_worker=args.gpus_per_worker or 0.0,
    )
    with tqdm(total=0, desc="bev replay (ray)", unit="frame set", disable=args.no_progress) as bar:

        def opened(recording: Recording) -> None:
            bar.total = (bar.total or 0) + max(recording.message_counts.values(), default=0)
            bar.refresh()

        def progress(n: int) -> Any:
            return bar.update(n)

        return replay_recordings_on_ray(args.recordings, args.out, spec, options, ray_options, progress=progress, on_open=opened)
