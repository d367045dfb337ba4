"""Recorded drives in: one MCAP file, or one rosbag2 folder (sqlite3 or mcap storage), each camera's images on a topic
as ``sensor_msgs/msg/CompressedImage`` or ``sensor_msgs/msg/Image`` (ROS 2, CDR), or ``foxglove.CompressedImage`` or
``foxglove.RawImage`` (protobuf or JSON; MCAP only). Uncompressed images are converted to RGB as they are read
(``raw.py``: colour, grey, Bayer and YUV 4:2:2 encodings).

``open_recording`` looks at a recording's index (topics, message counts, time span) without reading its messages (an
MCAP without one is read through once); ``iter_camera_messages`` then streams its cameras' images one message at a
time, from a log-time window only when asked: in log-time order where the file indexes its chunks (rosbag2, and MCAP
as most tools write it), else in the order they were logged (never sorted in memory, which would mean holding the
recording whole; frame sets are grouped by capture time anyway). A ``Recording`` holds nothing but names and numbers,
so it pickles (to a Ray worker, say).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO, Literal

import numpy as np
from numpy.typing import NDArray

from bev_service.errors import RecordingError
from bev_service.recordings import foxglove, ros
from bev_service.recordings.raw import raw_to_rgb
from bev_service.recordings.topics import match_topics

log = logging.getLogger(__name__)

MCAP_MAGIC = b"\x89MCAP0\r\n"
RAW_SCHEMAS = frozenset({ros.RAW_IMAGE, foxglove.RAW_IMAGE})
IMAGE_SCHEMAS = frozenset({ros.COMPRESSED_IMAGE, foxglove.COMPRESSED_IMAGE}) | RAW_SCHEMAS
Kind = Literal["mcap", "rosbag2"]


@dataclass(frozen=True)
class CameraMessage:
    """One camera image of a recording. ``capture_time_ns`` is its header stamp, or its log time when the stamp is
    unset (zero). A message that does not decode comes with ``error`` set and no data, its capture time estimated from
    its log time (as the topic's message before it was logged after its capture), so that the frame set it was meant
    for is skipped with the reason rather than the whole recording."""

    camera: str
    topic: str
    capture_time_ns: int
    log_time_ns: int
    data: bytes | NDArray[np.uint8] = field(repr=False)  # the encoded image, or an uncompressed one as RGB (H, W, 3)
    format: str  # the compressed image's format ("jpeg", "png"), or "raw <encoding>"
    error: str = ""


class _Undecodable:
    """Per topic: how far behind its capture the last good message was logged, to place one that does not decode."""

    def __init__(self, camera_of: Mapping[str, str]) -> None:
        self._camera_of = camera_of
        self._delay_ns: dict[str, int] = {}

    def good(self, topic: str, capture_time_ns: int, log_time_ns: int) -> None:
        self._delay_ns[topic] = log_time_ns - capture_time_ns

    def message(self, topic: str, log_time_ns: int, exc: Exception) -> CameraMessage:
        camera = self._camera_of[topic]
        logged = f"{log_time_ns // 1_000_000_000}.{log_time_ns % 1_000_000_000:09d} s"
        error = f"undecodable image of {camera} ({topic}, logged at {logged}): {type(exc).__name__}: {exc}"
        log.warning("%s", error)
        capture_ns = log_time_ns - self._delay_ns.get(topic, 0)
        return CameraMessage(camera, topic, capture_ns, log_time_ns, b"", "", error=error)


@dataclass(frozen=True)
class Recording:
    path: Path
    kind: Kind
    topics: dict[str, str]  # camera -> topic, in rig order
    message_counts: dict[str, int]  # per camera (0 where the index does not say)
    start_ns: int  # log times of the first and last message, as the index gives them (0 when it does not)
    end_ns: int

    @property
    def name(self) -> str:
        """The drive's name: the file's stem, or the rosbag2 folder's name."""
        return self.path.stem if self.kind == "mcap" else self.path.name


def recording_kind(path: Path) -> Kind:
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return "rosbag2"
        raise RecordingError(f"{path}: a folder, but not a rosbag2 recording (it has no metadata.yaml)")
    try:
        with path.open("rb") as f:
            magic = f.read(len(MCAP_MAGIC))
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - len(MCAP_MAGIC)))
            tail = f.read()
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read the recording: {exc.strerror or exc}") from exc
    if magic != MCAP_MAGIC:
        raise RecordingError(f"{path}: not an MCAP file (it does not start with the MCAP magic) nor a rosbag2 folder")
    # A complete MCAP ends with the magic too (after its footer): one cut off while it was written does not.
    if size < 2 * len(MCAP_MAGIC) or tail != MCAP_MAGIC:
        raise RecordingError(f"{path}: truncated MCAP ({size} bytes; it does not end with the MCAP magic after a footer)")
    return "mcap"


def _failed(path: Path, exc: BaseException) -> RecordingError:
    what = str(exc) or type(exc).__name__
    return RecordingError(f"{path}: unreadable recording (truncated or corrupt?): {type(exc).__name__}: {what}")


def open_recording(path: str | Path, camera_names: Sequence[str], topic_map: Mapping[str, str] | None = None) -> Recording:
    """A recording's camera topics (``topic_map`` where given, else found by camera name) and its index."""
    path = Path(path)
    kind = recording_kind(path)
    try:
        topics, counts, start, end = _mcap_index(path) if kind == "mcap" else _rosbag2_index(path)
    except RecordingError:
        raise
    except Exception as exc:  # the readers raise many types on a broken file; all mean the same here
        raise _failed(path, exc) from exc
    mapping = match_topics(camera_names, topics.keys(), topic_map, source=str(path))
    return Recording(
        path=path,
        kind=kind,
        topics=mapping,
        message_counts={camera: counts.get(topic, 0) for camera, topic in mapping.items()},
        start_ns=start,
        end_ns=end,
    )


def _mcap_index(path: Path) -> tuple[dict[str, str], dict[str, int], int, int]:
    """{image topic: schema name}, {topic: message count}, first and last log time, from the MCAP's summary; a file
    without one (written without an index, or cut off) is read through once."""
    from mcap.reader import make_reader

    with path.open("rb") as f:
        summary = make_reader(f).get_summary()
    if summary is None:
        return _mcap_scan(path)
    schemas = {sid: s.name for sid, s in summary.schemas.items()}
    topics = {c.topic: schemas.get(c.schema_id, "") for c in summary.channels.values()}
    stats = summary.statistics
    counts: dict[str, int] = {}
    if stats is not None:
        for cid, n in stats.channel_message_counts.items():
            topic = summary.channels[cid].topic
            counts[topic] = counts.get(topic, 0) + n
    start, end = (stats.message_start_time, stats.message_end_time) if stats is not None else (0, 0)
    return {t: s for t, s in topics.items() if s in IMAGE_SCHEMAS}, counts, start, end


def _mcap_scan(path: Path) -> tuple[dict[str, str], dict[str, int], int, int]:
    """As ``_mcap_index``, by reading every message: an MCAP written without a summary, or one cut off before it
    (which then fails where it ends)."""
    from mcap.reader import NonSeekingReader

    log.info("%s: no summary section; reading the file through for its topics", path)
    topics: dict[str, str] = {}
    counts: dict[str, int] = {}
    start, end = 0, 0
    with path.open("rb") as f:
        # log_time_order=False: sorting would hold every message of the file in memory at once
        for schema, channel, message in NonSeekingReader(f, validate_crcs=True).iter_messages(log_time_order=False):
            topics[channel.topic] = schema.name if schema is not None else ""
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            start = message.log_time if not start else min(start, message.log_time)
            end = max(end, message.log_time)
    return {t: s for t, s in topics.items() if s in IMAGE_SCHEMAS}, counts, start, end


def _rosbag2_index(path: Path) -> tuple[dict[str, str], dict[str, int], int, int]:
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        connections = [c for c in reader.connections if c.msgtype in (ros.COMPRESSED_IMAGE, ros.RAW_IMAGE)]
        counts: dict[str, int] = {}
        for c in connections:
            counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
        return {c.topic: c.msgtype for c in connections}, counts, reader.start_time, reader.end_time


def iter_camera_messages(recording: Recording, start_ns: int | None = None, end_ns: int | None = None) -> Iterator[CameraMessage]:
    """The cameras' images with log time in [start_ns, end_ns) (all when None), streamed: in log-time order, or
    where an MCAP has no chunk index, in the order they were logged."""
    messages = _iter_mcap if recording.kind == "mcap" else _iter_rosbag2
    try:
        yield from messages(recording, start_ns, end_ns)
    except RecordingError:
        raise
    except Exception as exc:  # as in open_recording: a file cut off mid-chunk surfaces here
        raise _failed(recording.path, exc) from exc


def _iter_mcap(recording: Recording, start_ns: int | None, end_ns: int | None) -> Iterator[CameraMessage]:
    from mcap_ros2.decoder import DecoderFactory

    camera_of = {topic: camera for camera, topic in recording.topics.items()}
    ros_decoders = DecoderFactory()
    decoders: dict[int, ImageDecoder] = {}
    undecodable = _Undecodable(camera_of)
    with recording.path.open("rb") as f:
        for schema, channel, message in _mcap_messages(f, list(camera_of), start_ns, end_ns):
            if channel.id not in decoders:
                decoders[channel.id] = _image_decoder(recording.path, schema, channel, ros_decoders)
            try:  # the chunk it came in passed its CRC: what fails here is this message alone
                stamp_ns, data, image_format = decoders[channel.id](message.data)
            except Exception as exc:  # JSON without data, bad base64, CDR or protobuf that does not parse, ...
                yield undecodable.message(channel.topic, message.log_time, exc)
                continue
            undecodable.good(channel.topic, stamp_ns or message.log_time, message.log_time)
            yield CameraMessage(
                camera=camera_of[channel.topic],
                topic=channel.topic,
                capture_time_ns=stamp_ns or message.log_time,
                log_time_ns=message.log_time,
                data=data,
                format=image_format,
            )


def _mcap_messages(f: BinaryIO, topics: list[str], start_ns: int | None, end_ns: int | None) -> Iterator[Any]:
    """(schema, channel, message) of ``topics``, CRCs checked (a damaged chunk fails here, not as a wrong image).

    With a chunk index: in log-time order, chunk by chunk (mcap merges chunks by their time ranges). Without one: in
    file order, read straight through. Not the other way round: mcap 1.6 sorts an unindexed file in memory whole for
    log-time order (and its SeekingReader falls back to that, without checking CRCs), and in file order a SeekingReader
    queues each chunk's messages behind every other chunk, so it decompresses the whole file before the first."""
    from mcap.reader import NonSeekingReader, SeekingReader

    summary = SeekingReader(f, validate_crcs=True).get_summary()
    f.seek(0)
    if summary is not None and summary.chunk_indexes:
        indexed = SeekingReader(f, validate_crcs=True)
        yield from indexed.iter_messages(topics=topics, starting_at=start_ns, ending_before=end_ns, log_time_order=True)
        return
    linear = NonSeekingReader(f, validate_crcs=True)
    yield from linear.iter_messages(topics=topics, starting_at=start_ns, ending_before=end_ns, log_time_order=False)


Image = bytes | NDArray[np.uint8]
ImageDecoder = Callable[[bytes], tuple[int, Image, str]]  # message bytes -> (stamp ns, image, format)


def _pixels(msg: Any, data: Any, *, big_endian: bool = False) -> tuple[Image, str]:
    """An uncompressed image message's pixels as RGB (ROS's ``sensor_msgs/msg/Image``, Foxglove's RawImage);
    ``data`` is read in place (bytes or a uint8 array), not copied first."""
    rgb = raw_to_rgb(data, width=msg.width, height=msg.height, step=msg.step, encoding=msg.encoding, big_endian=big_endian)
    return rgb, f"raw {msg.encoding}"


def _ros_image(msg: Any, raw: bool) -> tuple[int, Image, str]:
    """A decoded ROS 2 ``CompressedImage`` or ``Image`` (``raw``): its stamp, its image, its format."""
    stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
    if raw:
        return stamp, *_pixels(msg, msg.data, big_endian=bool(msg.is_bigendian))
    return stamp, bytes(msg.data), str(msg.format)


def _image_decoder(path: Path, schema: Any, channel: Any, ros_decoders: Any) -> ImageDecoder:
    name = schema.name if schema is not None else ""
    where = f"{path}: topic {channel.topic!r}"
    if name in (ros.COMPRESSED_IMAGE, ros.RAW_IMAGE) and channel.message_encoding == ros.CDR_ENCODING:
        decode = ros_decoders.decoder_for(channel.message_encoding, schema)
        if decode is None:
            raise RecordingError(f"{where}: a {name} schema in {schema.encoding!r}, not the ros2msg this reads")
        raw = name == ros.RAW_IMAGE

        def from_ros(data: bytes) -> tuple[int, Image, str]:
            return _ros_image(decode(data), raw)

        return from_ros
    if name in (foxglove.COMPRESSED_IMAGE, foxglove.RAW_IMAGE) and channel.message_encoding == foxglove.JSON_MESSAGE_ENCODING:
        raw = name == foxglove.RAW_IMAGE

        def from_json(data: bytes) -> tuple[int, Image, str]:
            msg = json.loads(data)
            stamp, pixels = foxglove.time_ns_from_json(msg.get("timestamp")), base64.b64decode(msg["data"])
            if raw:
                fields = SimpleNamespace(**{k: msg[k] for k in ("width", "height", "step", "encoding")})
                return stamp, *_pixels(fields, pixels)
            return stamp, pixels, str(msg.get("format", ""))

        return from_json
    if name in (foxglove.COMPRESSED_IMAGE, foxglove.RAW_IMAGE) and channel.message_encoding == foxglove.PROTOBUF_ENCODING:
        cls = foxglove.protobuf_message_class(name, bytes(schema.data))
        raw = name == foxglove.RAW_IMAGE

        def from_protobuf(data: bytes) -> tuple[int, Image, str]:
            msg = cls.FromString(data)
            stamp = msg.timestamp.seconds * 1_000_000_000 + msg.timestamp.nanos
            if raw:
                return stamp, *_pixels(msg, msg.data)
            return stamp, bytes(msg.data), str(msg.format)

        return from_protobuf
    raise RecordingError(
        f"{where}: {name or 'no schema'} in {channel.message_encoding!r} encoding is not an image this reads "
        f"({ros.COMPRESSED_IMAGE} or {ros.RAW_IMAGE} as cdr, {foxglove.COMPRESSED_IMAGE} or {foxglove.RAW_IMAGE} as json "
        "or protobuf)"
    )


def _iter_rosbag2(recording: Recording, start_ns: int | None, end_ns: int | None) -> Iterator[CameraMessage]:
    from rosbags.rosbag2 import Reader

    camera_of = {topic: camera for camera, topic in recording.topics.items()}
    store = ros.typestore()
    undecodable = _Undecodable(camera_of)
    with Reader(recording.path) as reader:
        connections = [c for c in reader.connections if c.topic in camera_of]
        for connection, log_time, raw in reader.messages(connections=connections, start=start_ns, stop=end_ns):
            try:  # as for MCAP: one message that does not parse skips its frame set, not the recording
                stamp, data, image_format = _ros_image(
                    store.deserialize_cdr(raw, connection.msgtype), connection.msgtype == ros.RAW_IMAGE
                )
            except Exception as exc:
                yield undecodable.message(connection.topic, log_time, exc)
                continue
            undecodable.good(connection.topic, stamp or log_time, log_time)
            yield CameraMessage(
                camera=camera_of[connection.topic],
                topic=connection.topic,
                capture_time_ns=stamp or log_time,
                log_time_ns=log_time,
                data=data,
                format=image_format,
            )
