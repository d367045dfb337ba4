"""Drives: poses advance by speed / fps along the route and the BEV content moves with them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bev_service.classes import CLASSES
from bev_service.geometry.grid import EGO
from bev_service.geometry.rig import Rig
from bev_service.synth import DriveFrame, DrivePlan, SyntheticWorld, iter_drive

GROUND_IDS = np.array([c.id for c in CLASSES if c.ground])
SPEED_MPS, FPS = 6.0, 10.0


@pytest.fixture(scope="module")
def drive(rig: Rig, world: SyntheticWorld) -> list[DriveFrame]:
    """Four frames on the longest straight of the ring."""
    straight = max((s for s in world.route_sections if s.kind == "straight"), key=lambda s: s.s1_m - s.s0_m)
    assert straight.s1_m - straight.s0_m > 25
    plan = DrivePlan(frames=4, speed_mps=SPEED_MPS, fps=FPS, start_s_m=straight.s0_m + 3.0)
    return list(iter_drive(rig, world, plan, seed=1, scale=0.25))


def best_forward_shift(before: np.ndarray, after: np.ndarray, max_rows: int) -> int:
    """Rows k by which the ground content of ``before`` moved down the grid (towards the rear) in ``after``."""
    errors = []
    for k in range(max_rows + 1):
        a, b = before[: before.shape[0] - k], after[k:]
        valid = np.isin(a, GROUND_IDS) & np.isin(b, GROUND_IDS)
        errors.append((a[valid] != b[valid]).mean())
    return int(np.argmin(errors))


def test_timestamps_and_poses_follow_speed_and_frame_rate(drive: list[DriveFrame]) -> None:
    assert [f.timestamp_s for f in drive] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    for a, b in itertools.pairwise(drive):
        step = np.hypot(b.frame_set.pose.x_m - a.frame_set.pose.x_m, b.frame_set.pose.y_m - a.frame_set.pose.y_m)
        assert step == pytest.approx(SPEED_MPS / FPS, rel=1e-3)
        assert b.frame_set.time_s - a.frame_set.time_s == pytest.approx(1 / FPS)
        assert b.frame_set.appearance == a.frame_set.appearance, "lighting holds for the whole drive"


def test_bev_content_shifts_by_speed_over_fps(drive: list[DriveFrame], rig: Rig) -> None:
    """The true BEV of the next frame is this one moved back by speed / fps; so is what the cameras
    see (the oracle BEV of the next frame against this frame's truth: the oracle's own sampling
    pattern stands still in the grid, so it is matched against the truth)."""
    expected_rows = SPEED_MPS / FPS / rig.grid.cell_size_m  # 12 rows of 5 cm
    for a, b in itertools.pairwise(drive):
        before = a.frame_set.bev_truth.copy()
        before[before == EGO] = 255
        for after in (b.frame_set.bev_truth.copy(), b.frame_set.bev_oracle.copy()):
            after[after == EGO] = 255
            assert best_forward_shift(before, after, 30) == pytest.approx(expected_rows, abs=1)


def test_drive_plan_is_checked() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        DrivePlan(frames=0, speed_mps=1.0, fps=10.0)
    with pytest.raises(ValueError, match="speed"):
        DrivePlan(frames=2, speed_mps=-1.0, fps=10.0)
    with pytest.raises(ValueError, match="fps"):
        DrivePlan(frames=2, speed_mps=1.0, fps=0.0)
