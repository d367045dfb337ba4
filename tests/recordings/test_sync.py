"""Frame sets by capture time: complete ones pass, a camera missing or out of tolerance skips exactly its frame set
(reported with its time and the camera), memory stays bounded, late images are counted."""

from __future__ import annotations

import numpy as np
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


def stream(images: list[tuple[str, int]], *, log_delay_ns: int = 5_000_000) -> list[CameraMessage]:
    """(camera, capture time) images as messages in log-time order (logged ``log_delay_ns`` after capture)."""
    out = [CameraMessage(c, f"/cam/{c}", t, t + log_delay_ns, f"{c}@{t}".encode(), "jpeg") for c, t in images]
    return sorted(out, key=lambda m: m.log_time_ns)


def assert_never_mis_synced(frame_sets: list[FrameSet], tolerance_ns: int = TOLERANCE_NS) -> None:
    for frame_set in frame_sets:
        assert list(frame_set.images) == list(CAMERAS)
        offsets = [m.capture_time_ns - frame_set.time_ns for m in frame_set.images.values()]
        assert min(offsets) == 0 and max(offsets) <= tolerance_ns, (frame_set.time_ns, offsets)


def test_a_dropped_frame_then_an_early_image_loses_only_the_dropped_frame_set() -> None:
    """front drops frame 2 and its frame 3 comes 2 ms early: that image is frame set 3's, not frame set 2's."""
    frame_sets, skipped = grouped(5, {(2, "front"): None, (3, "front"): -2.0})
    assert [f.time_ns for f in frame_sets] == [stamp(0), stamp(1), stamp(3) - 2_000_000, stamp(4)]
    assert {m.data for m in frame_sets[2].images.values()} == {f"{c}3".encode() for c in CAMERAS}
    assert skipped == [SkippedFrameSet(time_ns=stamp(2), missing=("front",))]


def test_a_dropped_frame_then_an_image_beyond_tolerance_is_reported_at_its_own_frame_set() -> None:
    """rear drops frame 2 and its frame 3 comes 25 ms early: frame set 2 misses rear, frame set 3 is out of tolerance;
    frame set 2 is never charged with frame 3's image."""
    frame_sets, skipped = grouped(5, {(2, "rear"): None, (3, "rear"): -25.0})
    assert_in_sync(frame_sets, [0, 1, 4])
    assert skipped == [
        SkippedFrameSet(time_ns=stamp(2), missing=("rear",)),
        SkippedFrameSet(stamp(3) - 25_000_000, missing=(), out_of_tolerance=dict.fromkeys(("front", "left", "right"), 25.0)),
    ]


def test_a_faster_camera_s_extra_images_are_passed_over() -> None:
    """front at 30 Hz, the others at 10 Hz: every 10 Hz frame set is complete with front's nearest image; front's
    images in between are extras, neither frame sets nor skipped ones."""
    fast = [("front", T0 + round(k * PERIOD_NS / 3)) for k in range(18)]  # to 566 ms, past the last 10 Hz frame
    slow = [(c, stamp(k)) for k in range(6) for c in CAMERAS[1:]]
    grouper = FrameSetGrouper(CAMERAS, tolerance_ns=TOLERANCE_NS)
    items = [i for m in stream(fast + slow) for i in grouper.push(m)] + list(grouper.finish())
    assert all(isinstance(i, FrameSet) for i in items), [i for i in items if isinstance(i, SkippedFrameSet)]
    frame_sets: list[FrameSet] = items  # type: ignore[assignment]
    assert [f.time_ns for f in frame_sets] == [stamp(k) for k in range(6)]
    assert_never_mis_synced(frame_sets)
    assert grouper.extra == 12 and grouper.late == 0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fast_hz", [None, 20.0, 30.0])
def test_jitter_drops_and_mixed_rates_lose_exactly_the_frame_sets_with_a_dropped_image(seed: int, fast_hz: float | None) -> None:
    """10 Hz cameras with up to 6 ms of jitter (front faster where ``fast_hz``), one image in about six dropped: every
    frame set with all its images comes out whole and in tolerance, every frame set with one dropped is skipped once."""
    rng = np.random.default_rng(seed)
    frames = 60
    dropped = {int(k): str(rng.choice(CAMERAS)) for k in np.flatnonzero(rng.random(frames) < 0.15)}
    images = []
    for k in range(frames):
        for camera in CAMERAS[1:] if fast_hz else CAMERAS:
            if dropped.get(k) != camera:
                images.append((camera, stamp(k) + int(rng.integers(-6_000_000, 6_000_001))))
    if fast_hz:
        per_frame = round(fast_hz / 10)
        for n in range(frames * per_frame):
            if n % per_frame or dropped.get(n // per_frame) != "front":  # the image that meets frame n // per_frame
                images.append(("front", T0 + round(n * 1e9 / fast_hz) + int(rng.integers(-3_000_000, 3_000_001))))
    items = list(group_frame_sets(stream(images), CAMERAS, tolerance_ns=TOLERANCE_NS))
    frame_sets = [i for i in items if isinstance(i, FrameSet)]
    skipped = [i for i in items if isinstance(i, SkippedFrameSet)]
    assert_never_mis_synced(frame_sets)
    frame_of = [(f, round((f.time_ns - T0) / PERIOD_NS)) for f in frame_sets]
    assert [k for _, k in frame_of] == [k for k in range(frames) if k not in dropped]
    for frame_set, k in frame_of:
        assert all(abs(m.capture_time_ns - stamp(k)) <= 6_000_000 for m in frame_set.images.values())
    assert sorted(round((s.time_ns - T0) / PERIOD_NS) for s in skipped) == sorted(dropped)


def test_a_far_future_stamp_loses_only_its_own_image() -> None:
    """One image stamped a day ahead: frame sets are still decided by arrival, so the others all pass and memory stays
    bounded; the stray image is reported alone at its own time, at the end."""
    day_ns = 86_400 * 10**9
    images = [(c, stamp(k)) for k in range(40) for c in CAMERAS if (k, c) != (10, "left")]
    messages = stream(images)
    messages.append(CameraMessage("left", "/cam/left", stamp(10) + day_ns, stamp(10) + 5_000_000, b"stray", "jpeg"))
    messages.sort(key=lambda m: m.log_time_ns)
    grouper = FrameSetGrouper(CAMERAS, tolerance_ns=TOLERANCE_NS)
    items, most_pending = [], 0
    for message in messages:
        items.extend(grouper.push(message))
        most_pending = max(most_pending, grouper.pending)
    items.extend(grouper.finish())
    assert most_pending <= 4 * 12 + 1
    frame_sets = [i for i in items if isinstance(i, FrameSet)]
    assert [f.time_ns for f in frame_sets] == [stamp(k) for k in range(40) if k != 10]
    assert [s for s in items if isinstance(s, SkippedFrameSet)] == [
        SkippedFrameSet(time_ns=stamp(10), missing=("left",)),
        SkippedFrameSet(time_ns=stamp(10) + day_ns, missing=("front", "rear", "right")),
    ]


def test_unset_log_times_fall_back_to_the_stamps_for_the_horizon() -> None:
    """A recording that logged every image at time 0 still streams: its stamps stand in for the log times."""
    grouper = FrameSetGrouper(CAMERAS, tolerance_ns=TOLERANCE_NS)
    items, most_pending = [], 0
    for message in messages(40):
        items.extend(grouper.push(CameraMessage(message.camera, message.topic, message.capture_time_ns, 0, b"", "jpeg")))
        most_pending = max(most_pending, grouper.pending)
    items.extend(grouper.finish())
    assert most_pending <= 4 * 12
    assert [i.time_ns for i in items if isinstance(i, FrameSet)] == [stamp(k) for k in range(40)]
