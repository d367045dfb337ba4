"""A tiny synthetic drive written once per session: its folder (the JPEGs as rendered) and the same drive as an MCAP
recording, plus helpers that write recordings of hand-picked stamps and rosbag2 folders."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bev_service.cli.main import main
from bev_service.recordings import ros
from bev_service.recordings.mcap_out import CameraRecordingWriter, image_topic
from bev_service.synth import read_manifest

CAMERAS = ("front", "left", "rear", "right")
FRAMES = 3
FPS = 10.0
SMALL = ["--scale", "0.25", "--no-progress"]  # 240 x 160 images
EPOCH_NS = 1_700_000_000 * 1_000_000_000  # bev synth --mcap's first capture time
PERIOD_NS = round(1e9 / FPS)


@dataclass(frozen=True)
class Drive:
    folder: Path  # bev synth --drive --out: the rendered JPEGs
    mcap: Path  # the same drive, bev synth --drive --mcap
    jpegs: list[dict[str, bytes]]  # per frame set, per camera

    def stamp_ns(self, index: int) -> int:
        return EPOCH_NS + index * PERIOD_NS


@pytest.fixture(scope="session")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Drive:
    root = tmp_path_factory.mktemp("drive")
    folder, mcap = root / "frames", root / "drive.mcap"
    args = ["synth", "--drive", "--frames", str(FRAMES), "--fps", str(FPS), "--seed", "3", *SMALL]
    assert main([*args, "--out", str(folder), "--mcap", str(mcap)]) == 0
    entries = read_manifest(folder)["frame_sets"]
    jpegs = [{c: (folder / e["name"] / f"{c}.jpg").read_bytes() for c in CAMERAS} for e in entries]
    return Drive(folder=folder, mcap=mcap, jpegs=jpegs)


Image = tuple[str, int, bytes]  # camera, capture time ns, JPEG


def drive_images(drive: Drive, offsets_ms: dict[tuple[int, str], float | None] | None = None) -> list[Image]:
    """The drive's images at their stamps, moved by ``offsets_ms[(frame, camera)]`` (None: the image is left out)."""
    images = []
    for index, frames in enumerate(drive.jpegs):
        for camera in CAMERAS:
            offset = (offsets_ms or {}).get((index, camera), 0.0)
            if offset is not None:
                images.append((camera, drive.stamp_ns(index) + round(offset * 1e6), frames[camera]))
    return images


def write_mcap(path: Path, images: Iterable[Image], *, encoding: str = "ros2", topic: str | None = None) -> Path:
    """Images in log-time order (log time = capture time + 1 ms); ``topic`` "{camera}" formats each camera's topic."""
    ordered = sorted(images, key=lambda i: i[1])
    with CameraRecordingWriter(path, encoding=encoding) as writer:  # type: ignore[arg-type]
        for camera, stamp, data in ordered:
            name = topic.format(camera=camera) if topic else None
            writer.write_image(camera, stamp, data, log_time_ns=stamp + 1_000_000, topic=name)
    return path


def write_rosbag2(path: Path, images: Iterable[Image], *, storage: str) -> Path:
    """A rosbag2 folder (``storage`` sqlite3 or mcap) written with rosbags, sensor_msgs/msg/CompressedImage per camera."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    store = ros.typestore()
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {c: writer.add_connection(image_topic(c), ros.COMPRESSED_IMAGE, typestore=store) for c in CAMERAS}
        for camera, stamp, data in sorted(images, key=lambda i: i[1]):
            message = ros.compressed_image(stamp, f"{camera}_optical_frame", data, "jpeg")
            writer.write(connections[camera], stamp + 1_000_000, ros.serialize(message))
    return path
