"""Reading recordings: the synthetic drive's MCAP (ROS 2 CDR, Foxglove JSON and protobuf images) and rosbag2 folders
(sqlite3 and mcap storage) give back frame sets equal to the rendered JPEGs; topics by name or given; windows."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcap.writer import IndexType

from bev_service.errors import RecordingError
from bev_service.recordings import (
    FrameSet,
    SkippedFrameSet,
    group_frame_sets,
    iter_camera_messages,
    open_recording,
    parse_topic_map,
    ros,
)
from bev_service.recordings.mcap_out import CameraRecordingWriter
from tests.recordings.conftest import CAMERAS, FRAMES, Drive, drive_images, write_mcap, write_rosbag2

TOLERANCE_NS = 20_000_000


def frame_sets(path: Path, topic_map: dict[str, str] | None = None) -> list[FrameSet]:
    recording = open_recording(path, CAMERAS, topic_map)
    grouped = list(group_frame_sets(iter_camera_messages(recording), CAMERAS, tolerance_ns=TOLERANCE_NS))
    assert all(isinstance(g, FrameSet) for g in grouped), [g for g in grouped if not isinstance(g, FrameSet)]
    return grouped  # type: ignore[return-value]


def assert_is_the_drive(sets: list[FrameSet], drive: Drive) -> None:
    assert [s.time_ns for s in sets] == [drive.stamp_ns(i) for i in range(FRAMES)]
    for index, frame_set in enumerate(sets):
        assert list(frame_set.images) == list(CAMERAS)
        for camera, message in frame_set.images.items():
            assert message.data == drive.jpegs[index][camera], (index, camera)
            assert message.capture_time_ns == drive.stamp_ns(index) and message.format == "jpeg"


def test_synth_mcap_reads_back_as_the_rendered_jpegs(drive: Drive) -> None:
    recording = open_recording(drive.mcap, CAMERAS)
    assert recording.kind == "mcap" and recording.name == "drive"
    assert recording.topics == {c: f"/cam/{c}/compressed" for c in CAMERAS}
    assert recording.message_counts == dict.fromkeys(CAMERAS, FRAMES)
    messages = list(iter_camera_messages(recording))
    # bev synth logs each camera a millisecond after the one before it: capture time is the stamp, not the log time
    assert {m.log_time_ns - m.capture_time_ns for m in messages} == {1_000_000, 2_000_000, 3_000_000, 4_000_000}
    assert_is_the_drive(frame_sets(drive.mcap), drive)


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_foxglove_compressed_images_read_back(drive: Drive, tmp_path: Path, encoding: str) -> None:
    path = write_mcap(tmp_path / f"{encoding}.mcap", drive_images(drive), encoding=encoding)
    assert_is_the_drive(frame_sets(path), drive)


def test_the_mcap_reads_with_rosbags_too(drive: Drive) -> None:
    """The ROS 2 schema and CDR that bev writes are what the rosbags MCAP reader expects, not only the mcap package."""
    from rosbags.highlevel import AnyReader

    with AnyReader([drive.mcap]) as reader:
        connections = [c for c in reader.connections if c.topic == "/cam/front/compressed"]
        decoded = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(connections=connections)]
    assert [bytes(m.data) for m in decoded] == [frames["front"] for frames in drive.jpegs]
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in decoded] == [drive.stamp_ns(i) for i in range(FRAMES)]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_rosbag2_folders_read_back(drive: Drive, tmp_path: Path, storage: str) -> None:
    bag = write_rosbag2(tmp_path / f"bag_{storage}", drive_images(drive), storage=storage)
    recording = open_recording(bag, CAMERAS)
    assert recording.kind == "rosbag2" and recording.name == f"bag_{storage}"
    assert recording.message_counts == dict.fromkeys(CAMERAS, FRAMES)
    assert_is_the_drive(frame_sets(bag), drive)


def test_topics_given_explicitly_or_found_by_name(drive: Drive, tmp_path: Path) -> None:
    path = write_mcap(tmp_path / "named.mcap", drive_images(drive), topic="/vehicle/{camera}_fisheye/image/compressed")
    found = open_recording(path, CAMERAS).topics
    assert found == {c: f"/vehicle/{c}_fisheye/image/compressed" for c in CAMERAS}
    given = parse_topic_map("front=/vehicle/rear_fisheye/image/compressed, rear=/vehicle/front_fisheye/image/compressed")
    swapped = open_recording(path, CAMERAS, given).topics
    assert swapped["front"] == "/vehicle/rear_fisheye/image/compressed" and swapped["left"] == found["left"]
    sets = frame_sets(path, given)
    assert sets[0].images["front"].data == drive.jpegs[0]["rear"]


def test_an_ambiguous_or_missing_camera_topic_is_an_error_naming_it(drive: Drive, tmp_path: Path) -> None:
    images = drive_images(drive)
    both = write_mcap(tmp_path / "both.mcap", [*images, ("front_wide", images[0][1], images[0][2])])
    with pytest.raises(RecordingError, match=r"camera 'front' \(2 match: /cam/front/compressed, /cam/front_wide/compressed"):
        open_recording(both, CAMERAS)
    assert open_recording(both, CAMERAS, {"front": "/cam/front/compressed"}).topics["front"] == "/cam/front/compressed"
    three = write_mcap(tmp_path / "three.mcap", [i for i in images if i[0] != "rear"])
    with pytest.raises(RecordingError, match=r"three\.mcap: no single image topic for camera 'rear' \(none matches"):
        open_recording(three, CAMERAS)
    with pytest.raises(RecordingError, match=r"topic '/nope' is not an image topic"):
        open_recording(drive.mcap, CAMERAS, {"rear": "/nope"})
    with pytest.raises(RecordingError, match=r"'side', not a camera of the rig"):
        open_recording(drive.mcap, CAMERAS, {"side": "/cam/front/compressed"})
    with pytest.raises(RecordingError, match="expected CAMERA=TOPIC"):
        parse_topic_map("front")


def test_a_log_time_window_reads_only_its_messages(drive: Drive) -> None:
    recording = open_recording(drive.mcap, CAMERAS)
    start, end = drive.stamp_ns(1), drive.stamp_ns(2)
    messages = list(iter_camera_messages(recording, start, end))
    assert len(messages) == 4 and {m.capture_time_ns for m in messages} == {drive.stamp_ns(1)}
    assert all(start <= m.log_time_ns < end for m in messages)


def test_an_unset_stamp_falls_back_to_the_log_time(tmp_path: Path) -> None:
    path = tmp_path / "unstamped.mcap"
    with CameraRecordingWriter(path) as writer:
        for k, camera in enumerate(CAMERAS):
            writer.write_image(camera, 0, b"jpeg", log_time_ns=5_000_000_000 + k * 1_000_000)
    messages = list(iter_camera_messages(open_recording(path, CAMERAS)))
    assert [m.capture_time_ns for m in messages] == [5_000_000_000 + k * 1_000_000 for k in range(4)]
    [frame_set] = group_frame_sets(messages, CAMERAS, tolerance_ns=TOLERANCE_NS)
    assert isinstance(frame_set, FrameSet) and frame_set.time_ns == 5_000_000_000


LAYOUTS = {
    "indexed": {},  # chunked, with a summary and chunk indexes: what bev writes
    "unchunked": {"use_chunking": False},  # a summary (channels, statistics), but no chunk to index
    "no summary": {  # as a logger that never wrote its summary section leaves it: only a read through finds topics
        "use_chunking": False,
        "index_types": IndexType.NONE,
        "repeat_channels": False,
        "repeat_schemas": False,
        "use_statistics": False,
        "use_summary_offsets": False,
    },
}


def write_long_mcap(path: Path, frames: int, image_bytes: int, **writer_options: Any) -> Path:
    """Incompressible images at 10 Hz, as sensor_msgs/msg/CompressedImage, with the mcap writer's ``writer_options``."""
    from mcap.writer import Writer

    rng = np.random.default_rng(0)
    with path.open("wb") as f:
        writer = Writer(f, **writer_options)
        writer.start(profile="ros2", library="test")
        schema = writer.register_schema(ros.COMPRESSED_IMAGE, ros.ROS2_SCHEMA_ENCODING, ros.msgdef(ros.COMPRESSED_IMAGE))
        channels = {c: writer.register_channel(f"/cam/{c}/compressed", ros.CDR_ENCODING, schema) for c in CAMERAS}
        for index in range(frames):
            stamp = 10**18 + index * 100_000_000
            for camera in CAMERAS:
                data = ros.serialize(ros.compressed_image(stamp, camera, rng.bytes(image_bytes), "jpeg"))
                writer.add_message(channels[camera], log_time=stamp, data=data, publish_time=stamp)
        writer.finish()
    return path


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reading_streams_a_long_recording(tmp_path: Path, layout: str) -> None:
    """80 MB of images (incompressible; 20 s at 10 Hz) go through in a few MB: a chunk and about a second of frame
    sets (4 MB here) at a time, whether the file is indexed or has to be read through (twice: for its topics, then
    for its images)."""
    path = write_long_mcap(tmp_path / "long.mcap", 200, 100_000, **LAYOUTS[layout])
    assert path.stat().st_size > 80e6
    tracemalloc.start()
    try:
        recording = open_recording(path, CAMERAS)
        count = sum(1 for _ in group_frame_sets(iter_camera_messages(recording), CAMERAS, tolerance_ns=TOLERANCE_NS))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert recording.topics == {c: f"/cam/{c}/compressed" for c in CAMERAS}
    assert count == 200
    assert peak < 16e6, f"peak {peak / 1e6:.1f} MB"


BAD_PAYLOADS = {
    "ros2": lambda good: good[:12],  # CDR cut off inside the header
    "json": lambda good: b'{"timestamp": {"sec": 1, "nsec": 0}, "format": "jpeg"}',  # no data
    "protobuf": lambda good: b"\x0a\xff\xff",  # a length-delimited field longer than the message
}


@pytest.mark.parametrize("encoding", BAD_PAYLOADS)
def test_one_undecodable_message_skips_only_its_frame_set(drive: Drive, tmp_path: Path, encoding: str) -> None:
    """Frame set 1's front message does not decode: it is reported with its topic and log time, the others pass."""
    path = tmp_path / f"bad_{encoding}.mcap"
    bad_log_ns = drive.stamp_ns(1) + 1_000_000
    with CameraRecordingWriter(path, encoding=encoding) as writer:  # type: ignore[arg-type]
        for camera, stamp, data in sorted(drive_images(drive), key=lambda i: i[1]):
            if (camera, stamp) != ("front", drive.stamp_ns(1)):
                writer.write_image(camera, stamp, data, log_time_ns=stamp + 1_000_000)
                continue
            channel = writer.channel("/cam/front/compressed", "", "", b"", "")  # registered with frame set 0's image
            good = ros.serialize(ros.compressed_image(stamp, "front_optical_frame", data, "jpeg"))
            writer.writer.add_message(channel, log_time=bad_log_ns, data=BAD_PAYLOADS[encoding](good), publish_time=bad_log_ns)
    grouped = list(group_frame_sets(iter_camera_messages(open_recording(path, CAMERAS)), CAMERAS, tolerance_ns=TOLERANCE_NS))
    assert [type(g).__name__ for g in grouped] == ["FrameSet", "SkippedFrameSet", "FrameSet"]
    skipped = grouped[1]
    assert isinstance(skipped, SkippedFrameSet) and skipped.time_ns == drive.stamp_ns(1)
    assert skipped.reason.startswith("undecodable image of front (/cam/front/compressed, logged at 1700000000.101000000 s): ")
    assert [g.time_ns for g in grouped] == [drive.stamp_ns(i) for i in range(FRAMES)]


def test_one_undecodable_rosbag2_message_skips_only_its_frame_set(drive: Drive, tmp_path: Path) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = ros.typestore()
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connections = {c: writer.add_connection(f"/cam/{c}/compressed", ros.COMPRESSED_IMAGE, typestore=store) for c in CAMERAS}
        for camera, stamp, data in sorted(drive_images(drive), key=lambda i: i[1]):
            raw = ros.serialize(ros.compressed_image(stamp, f"{camera}_optical_frame", data, "jpeg"))
            writer.write(
                connections[camera], stamp + 1_000_000, raw[:12] if (camera, stamp) == ("rear", drive.stamp_ns(2)) else raw
            )
    grouped = list(
        group_frame_sets(iter_camera_messages(open_recording(tmp_path / "bag", CAMERAS)), CAMERAS, tolerance_ns=TOLERANCE_NS)
    )
    assert [type(g).__name__ for g in grouped] == ["FrameSet", "FrameSet", "SkippedFrameSet"]
    assert grouped[2].time_ns == drive.stamp_ns(2)
    assert grouped[2].reason.startswith("undecodable image of rear (/cam/rear/compressed, logged at 1700000000.201000000 s)")  # type: ignore[union-attr]
