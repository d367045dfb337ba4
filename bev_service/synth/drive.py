"""Drives: sequences of frame sets as the vehicle follows the world's ring lane at a constant speed.

The world stays fixed; the vehicle's pose advances by ``speed_mps / fps`` metres along the route
per frame, and moving actors advance in time with it. Lighting and weather hold for the whole
drive; sensor noise changes from frame to frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from bev_service.geometry.rig import Rig
from bev_service.synth.appearance import sample_appearance
from bev_service.synth.render import RenderedFrameSet, renderer_for
from bev_service.synth.world import SyntheticWorld, VehiclePose

MAX_SPEED_MPS = 60.0


@dataclass(frozen=True)
class DrivePlan:
    """Where and how fast a drive goes."""

    frames: int
    speed_mps: float
    fps: float
    start_s_m: float = 0.0
    start_time_s: float = 0.0

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"a drive needs at least one frame, got frames={self.frames}")
        if not 0.0 <= self.speed_mps <= MAX_SPEED_MPS:
            raise ValueError(f"speed must be between 0 and {MAX_SPEED_MPS} m/s, got {self.speed_mps}")
        if not 0.0 < self.fps <= 1000.0:
            raise ValueError(f"fps must be positive (at most 1000), got {self.fps}")

    def timestamp_s(self, index: int) -> float:
        return index / self.fps

    def pose(self, world: SyntheticWorld, index: int) -> VehiclePose:
        return world.pose_on_route(self.start_s_m + self.speed_mps * self.timestamp_s(index))


@dataclass(frozen=True)
class DriveFrame:
    index: int
    timestamp_s: float
    frame_set: RenderedFrameSet


def iter_drive(
    rig: Rig, world: SyntheticWorld, plan: DrivePlan, *, seed: int = 0, scale: float = 1.0, indices: Iterable[int] | None = None
) -> Iterator[DriveFrame]:
    """Render the drive's frame sets in order, one at a time (a stream: nothing is kept); only
    those in ``indices`` when given (each is the same as in the full drive)."""
    renderer = renderer_for(rig, scale)
    appearance = sample_appearance(np.random.default_rng(np.random.SeedSequence([seed, 29])), len(rig.cameras))
    for index in range(plan.frames) if indices is None else indices:
        if not 0 <= index < plan.frames:
            raise ValueError(f"frame index {index} is outside the drive's {plan.frames} frames")
        stamp = plan.timestamp_s(index)
        frame_set = renderer.render(
            world,
            plan.pose(world, index),
            time_s=plan.start_time_s + stamp,
            appearance=appearance,
            seed=int(np.random.SeedSequence([seed, 31, index]).generate_state(1)[0]),
        )
        yield DriveFrame(index=index, timestamp_s=stamp, frame_set=frame_set)
