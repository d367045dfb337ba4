"""replay_shard: a recording's frame sets through the pipeline, the same grids as the pipeline run on the rendered
JPEGs; time windows split a recording into shards that add up to it; skipped frame sets come with their reasons;
malformed recordings give a RecordingError naming the file."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bev_service.errors import ModelError, RecordingError
from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Rig
from bev_service.recordings import (
    Recording,
    ReplayOptions,
    iter_camera_messages,
    iter_shard,
    open_recording,
    replay_recordings,
    replay_shard,
    time_windows,
    window_ns,
)
from bev_service.recordings.mcap_out import CameraRecordingWriter
from bev_service.recordings.outputs import OutputFormat
from bev_service.runtime.pipeline import STAGES, BevPipeline
from bev_service.runtime.torch_backend import TorchSegmenter
from tests.networks import TINY, one_torch_thread, tiny_model
from tests.recordings.conftest import CAMERAS, FRAMES, Drive, drive_images, write_mcap

__all__ = ["one_torch_thread"]


@pytest.fixture(scope="module")
def pipeline(rig: Rig, projector: BevProjector) -> Iterator[BevPipeline]:
    pipeline = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector, encoder=None)
    yield pipeline
    pipeline.close()


def test_a_whole_recording_gives_the_grids_of_its_frame_sets(drive: Drive, pipeline: BevPipeline) -> None:
    shard = replay_shard(open_recording(drive.mcap, CAMERAS), None, None, pipeline)
    assert shard.skipped == []
    assert [f.time_ns for f in shard.frame_sets] == [drive.stamp_ns(i) for i in range(FRAMES)]
    for index, replayed in enumerate(shard.frame_sets):
        np.testing.assert_array_equal(replayed.grid, pipeline.run(drive.jpegs[index]).grid)
        assert replayed.capture_time_ns == dict.fromkeys(CAMERAS, drive.stamp_ns(index))
        assert set(replayed.timings_ms) == {*STAGES, "total"}


def test_time_windows_split_a_recording_into_shards(drive: Drive, pipeline: BevPipeline) -> None:
    recording = open_recording(drive.mcap, CAMERAS)
    # frame set 1's first image is logged 1 ms after its capture, before the cut: it belongs to the first shard only
    cut = drive.stamp_ns(1) + 1_000_001
    first = replay_shard(recording, None, cut, pipeline)
    second = replay_shard(recording, cut, drive.stamp_ns(FRAMES), pipeline)
    assert [f.time_ns for f in first.frame_sets] == [drive.stamp_ns(0), drive.stamp_ns(1)]
    assert [f.time_ns for f in second.frame_sets] == [drive.stamp_ns(2)]
    assert first.skipped == second.skipped == []
    whole = replay_shard(recording, drive.stamp_ns(0), drive.stamp_ns(FRAMES), pipeline)
    for a, b in zip(whole.frame_sets, first.frame_sets + second.frame_sets, strict=True):
        np.testing.assert_array_equal(a.grid, b.grid)


def test_time_windows_cover_a_recording_once(drive: Drive, pipeline: BevPipeline) -> None:
    recording = pickle.loads(pickle.dumps(open_recording(drive.mcap, CAMERAS)))  # as it would travel to a worker
    windows = time_windows(recording, 0.07)
    assert len(windows) == 3 and windows[0][0] is None and windows[-1][1] is None
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    shards = [replay_shard(recording, t0, t1, pipeline) for t0, t1 in windows]
    assert [f.time_ns for s in shards for f in s.frame_sets] == [drive.stamp_ns(i) for i in range(FRAMES)]
    assert time_windows(recording, 3600.0) == [(None, None)]
    with pytest.raises(ValueError, match="positive number of seconds"):
        time_windows(recording, 0.0)


def test_a_time_window_counts_from_the_first_message_and_its_shards_cover_it_once(drive: Drive, pipeline: BevPipeline) -> None:
    recording = open_recording(drive.mcap, CAMERAS)
    t0, t1 = window_ns(recording, (0.05, 0.15))  # frame set 1 only: the drive runs at 10 frame sets a second
    assert (t0, t1) == (recording.start_ns + 50_000_000, recording.start_ns + 150_000_000)
    windows = time_windows(recording, 0.03, (t0, t1))
    assert len(windows) == 4 and windows[0][0] == t0 and windows[-1][1] == t1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    shards = [replay_shard(recording, a, b, pipeline) for a, b in windows]
    assert [f.time_ns for s in shards for f in s.frame_sets] == [drive.stamp_ns(1)]
    whole = replay_shard(recording, None, None, pipeline)
    np.testing.assert_array_equal(next(f for s in shards for f in s.frame_sets).grid, whole.frame_sets[1].grid)
    assert window_ns(recording, (None, None)) == (None, None)
    assert window_ns(recording, (None, 0.15)) == (None, t1)
    assert time_windows(recording, 3600.0, (None, t1)) == [(None, t1)]
    t_late = recording.start_ns + 10 * 10**9  # an end past the recording's: the last window still closes there
    late = time_windows(recording, 0.1, (t0, t_late))  # cut over [t0, the recording's end)
    assert len(late) == 2 and late[-1][1] == t_late and t0 < late[-1][0] < recording.end_ns
    with pytest.raises(RecordingError, match=r"--start 5 s is past the recording's end \(0.2"):
        window_ns(recording, (5.0, None))
    with pytest.raises(RecordingError, match="no start time"):
        window_ns(replace(recording, start_ns=0, end_ns=0), (0.1, None))


@pytest.mark.parametrize("stamp_offset_s", [1000.0, "boot"])
def test_shards_share_out_frame_sets_whatever_their_stamps_say(
    drive: Drive, pipeline: BevPipeline, tmp_path: Path, stamp_offset_s: float | str
) -> None:
    """Stamps 1000 s ahead of the log times, or counted from the sensor's boot: shards cut in log time still give
    every frame set to exactly one shard (the one where its first image was logged)."""
    frames, log_start_ns = 15, drive.stamp_ns(0)
    path = tmp_path / "offset.mcap"
    with CameraRecordingWriter(path) as writer:
        for index in range(frames):
            log_ns = log_start_ns + index * 100_000_000
            stamp_ns = 5 * 10**9 + index * 100_000_000 if stamp_offset_s == "boot" else log_ns + 1000 * 10**9
            for k, camera in enumerate(CAMERAS):
                writer.write_image(camera, stamp_ns, drive.jpegs[index % FRAMES][camera], log_time_ns=log_ns + k * 10**6)
    recording = open_recording(path, CAMERAS)
    windows = time_windows(recording, 0.3)
    assert len(windows) == 5

    def owned(t0: int | None, t1: int | None) -> list[int]:
        """The frame sets the shard would replay, found without running the network (done() passes them over)."""
        seen: list[int] = []
        skipped = list(iter_shard(recording, t0, t1, pipeline, horizon_ns=150_000_000, done=lambda t: seen.append(t) or True))
        assert skipped == []
        return seen

    shards = [owned(t0, t1) for t0, t1 in windows]
    assert all(shards), shards
    assert sorted(t for shard in shards for t in shard) == owned(None, None)
    assert len(owned(None, None)) == frames


def test_jittered_missing_and_broken_cameras_skip_exactly_their_frame_sets(
    drive: Drive, pipeline: BevPipeline, tmp_path: Path
) -> None:
    images = drive_images(drive, {(1, "rear"): 45.0})
    path = write_mcap(tmp_path / "jitter.mcap", images)
    shard = replay_shard(open_recording(path, CAMERAS), None, None, pipeline)
    assert [f.time_ns for f in shard.frame_sets] == [drive.stamp_ns(0), drive.stamp_ns(2)]
    [skipped] = shard.skipped
    assert skipped.time_ns == drive.stamp_ns(1) and skipped.out_of_tolerance == {"rear": 45.0}

    broken = [(c, t, b"not a jpeg" if (c, t) == ("left", drive.stamp_ns(2)) else data) for c, t, data in drive_images(drive)]
    shard = replay_shard(open_recording(write_mcap(tmp_path / "broken.mcap", broken), CAMERAS), None, None, pipeline)
    assert [f.time_ns for f in shard.frame_sets] == [drive.stamp_ns(0), drive.stamp_ns(1)]
    [skipped] = shard.skipped
    assert skipped.time_ns == drive.stamp_ns(2) and "camera 'left'" in skipped.reason


@pytest.mark.parametrize("batch_size", [2, 3])
def test_batches_give_the_grids_one_at_a_time_gives_in_order(
    drive: Drive, pipeline: BevPipeline, tmp_path: Path, batch_size: int
) -> None:
    broken = [(c, t, b"not a jpeg" if (c, t) == ("rear", drive.stamp_ns(0)) else data) for c, t, data in drive_images(drive)]
    path = write_mcap(tmp_path / "mixed.mcap", [i for i in broken if (i[0], i[1]) != ("left", drive.stamp_ns(1))])
    recording = open_recording(path, CAMERAS)
    one = list(iter_shard(recording, None, None, pipeline))
    batched = list(iter_shard(recording, None, None, pipeline, batch_size=batch_size))
    assert [type(i).__name__ for i in batched] == ["SkippedFrameSet", "SkippedFrameSet", "ReplayedFrameSet"]
    assert [i.time_ns for i in batched] == [i.time_ns for i in one] == [drive.stamp_ns(k) for k in range(FRAMES)]
    assert "camera 'rear'" in batched[0].reason and batched[1].reason == "missing left"  # type: ignore[union-attr]
    np.testing.assert_array_equal(batched[2].grid, one[2].grid)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        next(iter_shard(recording, None, None, pipeline, batch_size=0))


def test_malformed_recordings_name_the_file(drive: Drive, tmp_path: Path) -> None:
    data = drive.mcap.read_bytes()
    truncated = tmp_path / "truncated.mcap"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordingError, match=r"truncated\.mcap: truncated MCAP"):
        open_recording(truncated, CAMERAS)
    text = tmp_path / "notes.mcap"
    text.write_text("not a recording\n")
    with pytest.raises(RecordingError, match=r"notes\.mcap: not an MCAP file"):
        open_recording(text, CAMERAS)
    damaged = tmp_path / "damaged.mcap"
    damaged.write_bytes(data[:3000] + bytes(100) + data[3100:])
    with pytest.raises(RecordingError, match=r"damaged\.mcap: unreadable recording .*crc"):
        list(iter_camera_messages(open_recording(damaged, CAMERAS)))
    with pytest.raises(RecordingError, match=r"folder, but not a rosbag2 recording"):
        open_recording(tmp_path, CAMERAS)
    with pytest.raises(RecordingError, match=r"absent\.mcap: cannot read the recording"):
        open_recording(tmp_path / "absent.mcap", CAMERAS)
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9}\n")
    with pytest.raises(RecordingError, match=r"bag: unreadable recording"):
        open_recording(bag, CAMERAS)


def test_any_domain_error_in_one_recording_leaves_the_others_to_run(drive: Drive, pipeline: BevPipeline, tmp_path: Path) -> None:
    """A FrameError or ModelError (not only a RecordingError) while one recording runs is that recording's error."""
    first = write_mcap(tmp_path / "first.mcap", drive_images(drive))

    def opened(recording: Recording) -> None:
        if recording.name == "first":
            raise ModelError("the network gave 9 classes, the grid has 8")

    summaries = replay_recordings([first, drive.mcap], tmp_path / "out", pipeline, on_open=opened)
    assert summaries[0].error == "the network gave 9 classes, the grid has 8" and summaries[0].written == 0
    assert summaries[1].error is None and summaries[1].written == FRAMES


class CrashError(Exception):
    pass


@pytest.mark.parametrize("fmt", ["mcap", "parquet", "png"])
def test_a_failure_mid_write_leaves_nothing_half_written_and_the_next_run_redoes_it(
    drive: Drive, pipeline: BevPipeline, tmp_path: Path, fmt: OutputFormat
) -> None:
    """A crash once the first frame set is written: no MCAP or Parquet output at all (nor a .partial), the PNGs
    written whole; the next run writes everything that is missing."""
    out = tmp_path / "out"

    def crash(n: int) -> None:
        raise CrashError

    with pytest.raises(CrashError):
        replay_recordings([drive.mcap], out, pipeline, ReplayOptions(fmt=fmt), progress=crash)
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    first_png = f"drive/{drive.stamp_ns(0):019d}.png"
    assert left == ([first_png, "drive/provenance.json"] if fmt == "png" else [])
    [summary] = replay_recordings([drive.mcap], out, pipeline, ReplayOptions(fmt=fmt))
    assert summary.error is None and summary.skipped == []
    assert (summary.written, summary.already_written) == ((FRAMES - 1, 1) if fmt == "png" else (FRAMES, 0))
    [again] = replay_recordings([drive.mcap], out, pipeline, ReplayOptions(fmt=fmt))
    assert again.written == 0 and again.already_written == (FRAMES if fmt == "png" else -1)
