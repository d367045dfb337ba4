"""Benchmark: rendering synthetic surround-view frame sets (four 960x640 fisheye cameras of the default rig).

One frame set = ray casting every pixel of every camera against the ground, the vehicle's body,
the actors near the vehicle and the skyline; shading, shadows, haze, sky; the camera effects and
JPEG encoding; the true BEV and the oracle BEV (projector warp of the true labels). Timed over a
cycle of poses in one world (lanes, junctions, the parking lot), after a warm-up. One-off costs
are reported apart: building a world (rasters, actors) and the per-rig ray tables.

Run from the repository root: ``.venv/bin/python -m bench.synth [--repeat N] [--quick]``. This bench has
no baseline, hence no ratio: it prints absolute times. The last line printed is one JSON object:
``{"bench": "synth", "frame_set_s": ..., "stages_s": {...}, ...}``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from bench.common import Timing, bench_parser, format_table, json_line, machine, time_call, time_once_s
from bev_service.calib.rigfile import load_rig
from bev_service.shipped import DEFAULT_RIG
from bev_service.synth import Renderer, SyntheticWorld, VehiclePose


def _poses(world: SyntheticWorld, n: int) -> list[VehiclePose]:
    rng = np.random.default_rng(0)
    return [world.sample_pose(rng) for _ in range(n)]


def _render_timing(
    renderer: Renderer, world: SyntheticWorld, poses: list[VehiclePose], repeat: int, name: str
) -> tuple[Timing, dict[str, float]]:
    """Median time of a frame set over a cycle of poses, and the median seconds of each stage."""
    counter = iter(range(10**9))
    stages: list[dict[str, float]] = []

    def one() -> None:
        i = next(counter)
        renderer.render(world, poses[i % len(poses)], time_s=float(i), seed=i)
        stages.append(dict(renderer.last_timings_s))

    timing = time_call(one, repeat=repeat, warmup=2, name=name)
    timed = stages[-repeat:]
    return timing, {k: float(np.median([s[k] for s in timed])) for k in timed[0]}


def measure(repeat: int, quick: bool) -> tuple[list[Timing], dict[str, Any]]:
    rig = load_rig(DEFAULT_RIG)
    world_s = time_once_s(lambda: SyntheticWorld(1))
    world = SyntheticWorld(1)
    renderer: Renderer | None = None

    def build() -> None:
        nonlocal renderer
        renderer = Renderer(rig, scale=1.0)

    tables_s = time_once_s(build)
    assert renderer is not None
    poses = _poses(world, 12)
    full, stages = _render_timing(renderer, world, poses, repeat, "frame set, 4 x 960x640")
    timings = [full]
    figures: dict[str, Any] = {
        "frame_set_s": full.median_ms / 1e3,
        "frame_set_p99_s": full.p99_ms / 1e3,
        "stages_s": stages,
        "image_size_hw": list(renderer.image_size_hw),
        "cameras": len(rig.cameras),
        "world_build_s": world_s,
        "ray_tables_build_s": tables_s,
    }
    if not quick:
        half, _ = _render_timing(Renderer(rig, scale=0.5), world, poses, repeat, "frame set, 4 x 480x320")
        timings.append(half)
        figures["frame_set_half_res_s"] = half.median_ms / 1e3
    figures["machine"] = machine()
    return timings, figures


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__.splitlines()[0] if __doc__ else "synth bench", default_repeat=20)
    args = parser.parse_args(argv)
    repeat = min(args.repeat, 5) if args.quick else args.repeat
    timings, figures = measure(repeat=repeat, quick=args.quick)
    print(format_table(timings))
    stages = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in figures["stages_s"].items())
    print(f"stages (median, summed over cameras): {stages}")
    print(f"one-off: world {figures['world_build_s']:.2f} s, ray tables {figures['ray_tables_build_s']:.2f} s")
    print(f"machine: {figures['machine']}")
    print(json_line("synth", figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
