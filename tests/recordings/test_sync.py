"""Frame sets by capture time: complete ones pass, a camera missing or out of tolerance skips exactly its frame set
(reported with its time and the camera), memory stays bounded, late images are counted."""

from __future__ import annotations

import pytest

from bev_service.recordings import CameraMessage, FrameSet, FrameSetGrouper, SkippedFrameSet, group_frame_sets

CAMERAS = ("front", "left", "rear", "right")
PERIOD_NS = 100_000_000  # 10 Hz
TOLERANCE_NS = 20_000_000
T0 = 1_700_000_000 * 10**9


def stamp(index: int) -> int:
    return T0 + index * PERIOD_NS


def messages(frames: int, offsets_ms: dict[tuple[int, str], float | None] | None = None) -> list[CameraMessage]:
    """Frame k's images at stamp(k) (moved by offsets_ms, None: left out), in log-time order (capture + 5 ms)."""
    out = []
    for index in range(frames):
        for camera in CAMERAS:
            offset = (offsets_ms or {}).get((index, camera), 0.0)
            if offset is None:
                continue
            t = stamp(index) + round(offset * 1e6)
            out.append(CameraMessage(camera, f"/cam/{camera}", t, t + 5_000_000, f"{camera}{index}".encode(), "jpeg"))
    return sorted(out, key=lambda m: m.log_time_ns)


def grouped(frames: int, offsets_ms: dict[tuple[int, str], float | None]) -> tuple[list[FrameSet], list[SkippedFrameSet]]:
    items = list(group_frame_sets(messages(frames, offsets_ms), CAMERAS, tolerance_ns=TOLERANCE_NS))
    assert [i.time_ns for i in items] == sorted(i.time_ns for i in items), "in time order"
    return [i for i in items if isinstance(i, FrameSet)], [i for i in items if isinstance(i, SkippedFrameSet)]


def assert_in_sync(frame_sets: list[FrameSet], indices: list[int]) -> None:
    assert [f.time_ns for f in frame_sets] == [stamp(i) for i in indices]
    for frame_set, index in zip(frame_sets, indices, strict=True):
        assert list(frame_set.images) == list(CAMERAS)
        assert {m.data for m in frame_set.images.values()} == {f"{c}{index}".encode() for c in CAMERAS}, "never mixed"


def test_complete_frame_sets_within_tolerance_pass() -> None:
    frame_sets, skipped = grouped(5, {(1, "rear"): 15.0, (3, "left"): 19.9})
    assert skipped == []
    assert_in_sync(frame_sets, [0, 1, 2, 3, 4])


def test_a_camera_out_of_tolerance_skips_exactly_its_frame_set() -> None:
    frame_sets, skipped = grouped(5, {(2, "rear"): 45.0})
    assert_in_sync(frame_sets, [0, 1, 3, 4])
    assert skipped == [SkippedFrameSet(time_ns=stamp(2), missing=(), out_of_tolerance={"rear": 45.0})]
    assert skipped[0].reason == "out of tolerance rear (+45.0 ms)"


def test_an_early_camera_skips_only_its_frame_set() -> None:
    """An image 30 ms early becomes the frame set's time; the others are late to it, and only that set goes."""
    frame_sets, skipped = grouped(4, {(1, "front"): -30.0})
    assert_in_sync(frame_sets, [0, 2, 3])
    assert len(skipped) == 1 and skipped[0].time_ns == stamp(1) - 30_000_000
    assert skipped[0].out_of_tolerance == {"left": 30.0, "rear": 30.0, "right": 30.0}


def test_a_missing_camera_skips_exactly_its_frame_set() -> None:
    frame_sets, skipped = grouped(5, {(1, "left"): None, (3, "front"): None, (3, "right"): None})
    assert_in_sync(frame_sets, [0, 2, 4])
    assert skipped == [
        SkippedFrameSet(time_ns=stamp(1), missing=("left",)),
        SkippedFrameSet(time_ns=stamp(3), missing=("front", "right")),
    ]
    assert skipped[1].reason == "missing front, right"


def test_a_camera_out_of_tolerance_at_the_end_skips_only_the_last_frame_set() -> None:
    frame_sets, skipped = grouped(3, {(2, "rear"): 45.0})
    assert_in_sync(frame_sets, [0, 1])
    assert skipped == [SkippedFrameSet(time_ns=stamp(2), missing=(), out_of_tolerance={"rear": 45.0})]


def test_a_camera_late_in_every_frame_set_skips_each_once() -> None:
    frame_sets, skipped = grouped(4, {(i, "left"): 30.0 for i in range(4)})
    assert frame_sets == []
    assert [(s.time_ns, s.out_of_tolerance) for s in skipped] == [(stamp(i), {"left": 30.0}) for i in range(4)]


def test_a_camera_that_skips_the_next_to_last_frame_set_keeps_the_last() -> None:
    frame_sets, skipped = grouped(4, {(2, "right"): None})
    assert_in_sync(frame_sets, [0, 1, 3])
    assert skipped == [SkippedFrameSet(time_ns=stamp(2), missing=("right",))]


def test_a_camera_missing_at_the_end_is_reported() -> None:
    frame_sets, skipped = grouped(3, {(2, "right"): None})
    assert_in_sync(frame_sets, [0, 1])
    assert skipped == [SkippedFrameSet(time_ns=stamp(2), missing=("right",))]


def test_a_dead_camera_keeps_memory_bounded_and_reports_every_frame_set() -> None:
    """One camera silent for 200 frame sets (20 s): the others do not pile up waiting for it."""
    frames = 300
    grouper = FrameSetGrouper(CAMERAS, tolerance_ns=TOLERANCE_NS, horizon_ns=10**9)
    items, most_pending = [], 0
    for message in messages(frames, {(i, "rear"): None for i in range(50, 250)}):
        items.extend(grouper.push(message))
        most_pending = max(most_pending, grouper.pending)
    items.extend(grouper.finish())
    assert most_pending <= 4 * 12, "about a second of images at 10 Hz, not the whole silence"
    skipped = [i for i in items if isinstance(i, SkippedFrameSet)]
    assert [s.time_ns for s in skipped] == [stamp(i) for i in range(50, 250)]
    assert all(s.missing == ("rear",) for s in skipped)
    assert len(items) == frames


def test_an_image_after_its_frame_set_was_decided_is_counted_late() -> None:
    grouper = FrameSetGrouper(CAMERAS, tolerance_ns=TOLERANCE_NS, horizon_ns=300_000_000)
    stream = messages(6, {(0, "left"): None})
    late = CameraMessage("left", "/cam/left", stamp(0), stamp(5) + 1, b"left0", "jpeg")
    items = [item for m in [*stream, late] for item in grouper.push(m)] + list(grouper.finish())
    assert grouper.late == 1
    assert isinstance(items[0], SkippedFrameSet) and items[0].missing == ("left",)
    assert len(items) == 6


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one camera"):
        FrameSetGrouper((), tolerance_ns=1)
    with pytest.raises(ValueError, match="tolerance_ns < horizon_ns"):
        FrameSetGrouper(CAMERAS, tolerance_ns=10, horizon_ns=10)
    grouper = FrameSetGrouper(CAMERAS, tolerance_ns=TOLERANCE_NS)
    with pytest.raises(ValueError, match="camera 'side'"):
        list(grouper.push(CameraMessage("side", "/cam/side", 1, 1, b"", "jpeg")))
