"""Uncompressed camera images: every encoding ``raw.py`` reads gives back the RGB it was made from (Bayer and YUV
within their sampling), recordings of ``sensor_msgs/msg/Image`` (MCAP, rosbag2) and ``foxglove.RawImage`` replay to
the grids of the same images compressed, and an encoding it does not read skips exactly its frame sets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from bev_service.cli.main import main
from bev_service.imageio import decode_image
from bev_service.recordings import iter_camera_messages, open_recording, ros
from bev_service.recordings.mcap_out import CameraRecordingWriter, image_raw_topic
from bev_service.recordings.raw import ENCODINGS, raw_to_rgb
from tests.networks import one_torch_thread
from tests.recordings.conftest import CAMERAS, FRAMES, Drive

__all__ = ["one_torch_thread"]


def smooth_rgb(h: int = 24, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([40 + 5 * x, 60 + 6 * y, 200 - 3 * x - 2 * y], axis=-1).astype(np.uint8)


def encoded(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """``rgb`` laid out as ``encoding`` (a test of the reader, so built independently of it)."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    if encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        order = [r, g, b] if encoding.startswith("rgb") else [b, g, r]
        planes = order + ([np.full_like(r, 255)] if encoding.endswith("a8") else [])
        return np.stack(planes, axis=-1).astype(np.uint8)
    if encoding.startswith("bayer_"):
        pattern = encoding[len("bayer_") : -1]  # "rggb": the colours of the top-left 2x2 block, row by row
        plane = {"r": r, "g": g, "b": b}
        mosaic = np.zeros(r.shape, np.int32)
        for k, colour in enumerate(pattern):
            dy, dx = divmod(k, 2)
            mosaic[dy::2, dx::2] = plane[colour][dy::2, dx::2]
        return mosaic.astype(np.uint8)
    yy = 0.299 * r + 0.587 * g + 0.114 * b  # BT.601, video range as OpenCV's 4:2:2 conversions expect
    y = np.clip(16 + yy * 219 / 255, 0, 255)
    u = np.clip(128 + (b - yy) * 0.564 * 224 / 255, 0, 255)
    v = np.clip(128 + (r - yy) * 0.713 * 224 / 255, 0, 255)
    u2, v2 = (c.reshape(c.shape[0], -1, 2).mean(axis=2) for c in (u, v))  # one chroma sample per two pixels
    packed = np.zeros((*r.shape, 2), np.float64)
    first_is_chroma = encoding in ("yuv422", "uyvy")
    packed[..., 1 if first_is_chroma else 0] = y
    chroma = packed[..., 0 if first_is_chroma else 1]
    chroma[:, 0::2], chroma[:, 1::2] = u2, v2
    return np.round(packed).astype(np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_give_back_the_pixels_padded_rows_too(encoding: str) -> None:
    rgb = smooth_rgb()
    pixels = encoded(rgb, encoding)
    h, w = rgb.shape[:2]
    row = w * pixels.shape[2]
    np.testing.assert_array_equal(raw_to_rgb(pixels.tobytes(), width=w, height=h, step=row, encoding=encoding), rgb)
    padded = np.zeros((h, row + 7), np.uint8)  # rows padded to some alignment
    padded[:, :row] = pixels.reshape(h, row)
    np.testing.assert_array_equal(raw_to_rgb(padded.tobytes(), width=w, height=h, step=row + 7, encoding=encoding), rgb)


def test_grey_encodings_give_grey_rgb() -> None:
    grey = smooth_rgb()[..., 1]
    h, w = grey.shape
    out = raw_to_rgb(grey.tobytes(), width=w, height=h, step=w, encoding="mono8")
    assert out.shape == (h, w, 3) and all((out[..., i] == grey).all() for i in range(3))
    wide = grey.astype(np.uint16) * 256 + 17  # 16 bits: the high byte is the grey
    for big in (False, True):
        data = wide.astype(">u2" if big else "<u2").tobytes()
        np.testing.assert_array_equal(
            raw_to_rgb(data, width=w, height=h, step=2 * w, encoding="mono16", big_endian=big)[..., 0], grey
        )


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"])
def test_bayer_mosaics_demosaic_to_the_colours_they_sampled(encoding: str) -> None:
    rgb = smooth_rgb()
    h, w = rgb.shape[:2]
    out = raw_to_rgb(encoded(rgb, encoding).tobytes(), width=w, height=h, step=w, encoding=encoding)
    inner = (slice(2, -2), slice(2, -2))  # a smooth image interpolates back to within a few levels inside the border
    assert np.abs(out[inner].astype(int) - rgb[inner].astype(int)).max() <= 6, "a Bayer pattern read as another"


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_packed_yuv_gives_back_the_colours(encoding: str) -> None:
    rgb = smooth_rgb()
    h, w = rgb.shape[:2]
    out = raw_to_rgb(encoded(rgb, encoding).tobytes(), width=w, height=h, step=2 * w, encoding=encoding)
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 12  # chroma shared by two pixels


def test_buffers_that_do_not_fit_their_encoding_are_refused_by_name() -> None:
    data = bytes(24 * 32 * 3)
    with pytest.raises(ValueError, match=r"'yuv420' is not one this reads \(rgb8, "):
        raw_to_rgb(data, width=32, height=24, step=96, encoding="yuv420")
    with pytest.raises(ValueError, match="needs 2304 bytes, got 2303"):
        raw_to_rgb(data[:-1], width=32, height=24, step=96, encoding="rgb8")
    with pytest.raises(ValueError, match="row step of 90 bytes"):
        raw_to_rgb(data, width=32, height=24, step=90, encoding="rgb8")
    with pytest.raises(ValueError, match="even width"):
        raw_to_rgb(data, width=31, height=24, step=62, encoding="yuyv")
    assert set(ENCODINGS) >= {"rgb8", "bgr8", "mono8", "mono16", "bayer_rggb8", "yuv422"}


def decoded_drive(drive: Drive) -> list[dict[str, np.ndarray]]:
    return [{c: decode_image(jpegs[c], name=c) for c in CAMERAS} for jpegs in drive.jpegs]


def write_raw_mcap(path: Path, drive: Drive, *, encoding: str = "ros2", pixel_encoding: str = "rgb8", odd: str = "") -> Path:
    """The drive's frames, decoded, as raw images (``odd`` camera: an encoding nothing reads)."""
    with CameraRecordingWriter(path, encoding=encoding) as writer:  # type: ignore[arg-type]
        for index, images in enumerate(decoded_drive(drive)):
            for camera in CAMERAS:
                stamp = drive.stamp_ns(index)
                pixels = encoded(images[camera], pixel_encoding)
                name = "yuv420" if camera == odd else pixel_encoding
                writer.write_raw_image(camera, stamp, pixels, name, log_time_ns=stamp + 1_000_000)
    return path


def replay_grids(recording: Path, out: Path, weights: Path) -> tuple[int, np.ndarray]:
    code = main(["replay", str(recording), "--out", str(out), "--model", str(weights), "--format", "parquet", "--no-progress"])
    table = pq.read_table(out / f"{recording.stem if recording.is_file() else recording.name}.parquet")
    return code, table.column("grid").combine_chunks().to_numpy_ndarray()


@pytest.fixture(scope="module")
def compressed_grids(drive: Drive, tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    code, grids = replay_grids(drive.mcap, tmp_path_factory.mktemp("jpeg"), tiny_weights)
    assert code == 0 and len(grids) == FRAMES
    return grids


@pytest.mark.parametrize(("encoding", "pixels"), [("ros2", "rgb8"), ("ros2", "bgr8"), ("json", "bgra8")])
def test_raw_image_recordings_replay_to_the_grids_of_the_same_images_compressed(
    drive: Drive, tiny_weights: Path, compressed_grids: np.ndarray, tmp_path: Path, encoding: str, pixels: str
) -> None:
    recording = write_raw_mcap(tmp_path / "raw.mcap", drive, encoding=encoding, pixel_encoding=pixels)
    opened = open_recording(recording, CAMERAS)
    assert opened.topics == {c: image_raw_topic(c) for c in CAMERAS}
    first = next(iter_camera_messages(opened))
    assert first.format == f"raw {pixels}" and isinstance(first.data, np.ndarray)
    code, grids = replay_grids(recording, tmp_path / "out", tiny_weights)
    assert code == 0
    np.testing.assert_array_equal(grids, compressed_grids)


def test_a_raw_topic_is_read_before_its_compressed_companion(
    drive: Drive, tiny_weights: Path, compressed_grids: np.ndarray, tmp_path: Path
) -> None:
    """``image_transport`` publishes each camera twice, ``X`` and ``X/compressed``: no ``--topics`` is needed and the
    raw topic is the one read (the companions here hold the drive's frames in reverse, so reading them would show)."""
    recording = tmp_path / "both.mcap"
    with CameraRecordingWriter(recording) as writer:
        for index, images in enumerate(decoded_drive(drive)):
            stamp = drive.stamp_ns(index)
            for camera in CAMERAS:
                writer.write_raw_image(camera, stamp, images[camera], "rgb8", log_time_ns=stamp + 1_000_000)
                reversed_jpeg = drive.jpegs[FRAMES - 1 - index][camera]
                companion = f"{image_raw_topic(camera)}/compressed"
                writer.write_image(camera, stamp, reversed_jpeg, topic=companion, log_time_ns=stamp + 2_000_000)
    opened = open_recording(recording, CAMERAS)
    assert opened.topics == {c: image_raw_topic(c) for c in CAMERAS}
    code, grids = replay_grids(recording, tmp_path / "out", tiny_weights)
    assert code == 0
    np.testing.assert_array_equal(grids, compressed_grids)
    given = {c: f"{image_raw_topic(c)}/compressed" for c in CAMERAS}
    assert open_recording(recording, CAMERAS, given).topics == given


def test_a_rosbag2_of_raw_images_replays_too(
    drive: Drive, tiny_weights: Path, compressed_grids: np.ndarray, tmp_path: Path
) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    bag = tmp_path / "raw_bag"
    store = ros.typestore()
    with Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connections = {c: writer.add_connection(image_raw_topic(c), ros.RAW_IMAGE, typestore=store) for c in CAMERAS}
        for index, images in enumerate(decoded_drive(drive)):
            for camera in CAMERAS:
                stamp = drive.stamp_ns(index)
                bgr = cv2.cvtColor(images[camera], cv2.COLOR_RGB2BGR)
                message = ros.raw_image(stamp, f"{camera}_optical_frame", bgr, "bgr8")
                writer.write(connections[camera], stamp + 1_000_000, ros.serialize(message))
    code, grids = replay_grids(bag, tmp_path / "out", tiny_weights)
    assert code == 0
    np.testing.assert_array_equal(grids, compressed_grids)


def test_an_encoding_nothing_reads_skips_its_frame_sets_with_the_reason(
    drive: Drive, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = write_raw_mcap(tmp_path / "odd.mcap", drive, odd="rear")
    capsys.readouterr()
    assert main(["replay", str(recording), "--out", str(tmp_path / "out"), "--model", str(tiny_weights), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{recording}: 0 frame sets written (mcap), {FRAMES} skipped" in out
    assert "undecodable image of rear (/cam/rear/image_raw" in out and "'yuv420' is not one this reads" in out
