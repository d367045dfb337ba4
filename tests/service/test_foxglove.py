"""The Foxglove live view end to end: the real service with its real Foxglove server on loopback ports, a
real WebSocket client speaking the server's subprotocol, messages decoded from the advertised protobuf schemas."""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from bev_service.classes import palette
from bev_service.cli.main import main
from bev_service.geometry.grid import EGO, UNKNOWN
from bev_service.geometry.rig import Rig
from bev_service.service.app import create_app
from bev_service.service.errors import FoxgloveStartError
from bev_service.service.foxglove import GRID_TOPIC, DropOldestQueue, image_topic
from bev_service.service.settings import Settings
from bev_service.synth import RenderedFrameSet
from tests.conftest import REPO
from tests.live_server import LiveServer
from tests.service.conftest import Files

SUBPROTOCOL = "foxglove.sdk.v1"
MESSAGE_DATA = 0x01  # the server's binary opcode for a message on a subscription
TIMEOUT_S = 10.0


class FoxgloveClient:
    """A minimal client of the Foxglove WebSocket protocol: advertised channels by topic, subscriptions, messages."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.channels: dict[str, dict[str, Any]] = {}
        self._classes: dict[str, type[Message]] = {}
        self._next_subscription = 1
        self.topic_of: dict[int, str] = {}

    def wait_for_topics(self, topics: set[str]) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not topics <= self.channels.keys():
            assert time.monotonic() < deadline, f"not advertised within {TIMEOUT_S} s: {topics - self.channels.keys()}"
            self._handle(self.ws.recv(timeout=TIMEOUT_S))

    def subscribe(self, *topics: str) -> None:
        subscriptions = []
        for topic in topics:
            sub_id, self._next_subscription = self._next_subscription, self._next_subscription + 1
            self.topic_of[sub_id] = topic
            subscriptions.append({"id": sub_id, "channelId": self.channels[topic]["id"]})
        self.ws.send(json.dumps({"op": "subscribe", "subscriptions": subscriptions}))

    def next_message(self, topic: str, timeout_s: float = TIMEOUT_S) -> Message:
        """The next message on ``topic`` (others are skipped), decoded from its channel's advertised schema."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no message on {topic} within {timeout_s} s"
            received = self._handle(self.ws.recv(timeout=left))
            if received is not None and received[0] == topic:
                return self.decode(topic, received[1])

    def decode(self, topic: str, payload: bytes) -> Message:
        channel = self.channels[topic]
        assert channel["encoding"] == "protobuf"
        if topic not in self._classes:
            files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(channel["schema"]))
            pool = descriptor_pool.DescriptorPool()
            for file in files.file:  # dependencies first, as the server lists them
                pool.Add(file)
            self._classes[topic] = message_factory.GetMessageClass(pool.FindMessageTypeByName(channel["schemaName"]))
        return self._classes[topic].FromString(payload)

    def _handle(self, frame: str | bytes) -> tuple[str, bytes] | None:
        if isinstance(frame, str):
            message = json.loads(frame)
            if message["op"] == "advertise":
                self.channels.update({c["topic"]: c for c in message["channels"]})
            return None
        assert frame[0] == MESSAGE_DATA, f"unexpected binary opcode {frame[0]}"
        sub_id, _log_time_ns = struct.unpack_from("<IQ", frame, 1)
        return self.topic_of[sub_id], frame[13:]


@contextmanager
def foxglove_client(port: int, *, max_queue: int = 16) -> Iterator[FoxgloveClient]:
    """``max_queue``: messages the client buffers before it stops reading its socket."""
    url = f"ws://127.0.0.1:{port}"
    subprotocols: Any = [SUBPROTOCOL]
    with connect(url, subprotocols=subprotocols, open_timeout=TIMEOUT_S, close_timeout=1, max_queue=max_queue) as ws:
        assert ws.subprotocol == SUBPROTOCOL
        yield FoxgloveClient(ws)


def foxglove_port(live: LiveServer) -> int:
    publisher = live.app.state.bev.foxglove
    assert publisher is not None, "the service runs no Foxglove server"
    return int(publisher.port)


def wait_subscribed(live: LiveServer, client: FoxgloveClient) -> None:
    """Until the service sees every subscription of ``client``."""
    publisher = live.app.state.bev.foxglove
    deadline = time.monotonic() + TIMEOUT_S
    while not all(publisher.subscribed(topic) for topic in client.topic_of.values()):
        assert time.monotonic() < deadline, "the subscriptions did not reach the server"
        time.sleep(0.02)


def camera_topics(rig: Rig) -> set[str]:
    return {f"/bev/camera/{name}/{kind}" for name in rig.camera_names for kind in ("image", "calibration")}


def metric(live: LiveServer, name: str) -> float:
    text = httpx.get(live.url("/metrics")).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name} "))


def post_raw(live: LiveServer, files: Files, **params: str) -> np.ndarray:
    reply = httpx.post(live.url("/v1/bev"), files=files, params={"format": "raw", **params}, timeout=60)
    assert reply.status_code == 200, reply.text
    rows, cols = int(reply.headers["x-bev-rows"]), int(reply.headers["x-bev-cols"])
    return np.frombuffer(reply.content, np.uint8).reshape(rows, cols)


def expected_cells(bev: np.ndarray) -> np.ndarray:
    """message[j, i] = bev[rows - 1 - i, cols - 1 - j]: Grid columns along +x from the rear, rows along +y from the right."""
    rows, cols = bev.shape
    j, i = np.meshgrid(np.arange(cols), np.arange(rows), indexing="ij")
    return bev[rows - 1 - i, cols - 1 - j]


def grid_fields(message: Message) -> tuple[dict[str, int], np.ndarray]:
    """The Grid's fields by name (offset), and its data as (rows, columns, cell_stride) bytes."""
    offsets = {f.name: f.offset for f in message.fields}
    assert all(f.type == 1 for f in message.fields), "every field is a uint8"  # NumericType UINT8
    data = np.frombuffer(message.data, np.uint8)
    return offsets, data.reshape(-1, message.column_count, message.cell_stride)


@pytest.fixture(scope="module")
def live(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(foxglove_port=0)


def test_channels_are_advertised_with_their_schemas(live: LiveServer, default_rig: Rig) -> None:
    with foxglove_client(foxglove_port(live)) as client:
        client.wait_for_topics({"/bev/grid", "/tf", *camera_topics(default_rig)})
        schemas = {
            "/bev/grid": "foxglove.Grid",
            "/tf": "foxglove.FrameTransforms",
            **{f"/bev/camera/{n}/image": "foxglove.CompressedImage" for n in default_rig.camera_names},
            **{f"/bev/camera/{n}/calibration": "foxglove.CameraCalibration" for n in default_rig.camera_names},
        }
        for topic, schema_name in schemas.items():
            channel = client.channels[topic]
            assert (channel["schemaName"], channel["encoding"], channel["schemaEncoding"]) == (
                schema_name,
                "protobuf",
                "protobuf",
            )


def test_grid_and_images_of_a_rest_frame_set(
    live: LiveServer, default_rig: Rig, frame_set: RenderedFrameSet, image_files: Files
) -> None:
    grid = default_rig.grid
    with foxglove_client(foxglove_port(live)) as client:
        client.wait_for_topics({"/bev/grid", "/bev/camera/front/image"})
        client.subscribe("/bev/grid", "/bev/camera/front/image")
        wait_subscribed(live, client)
        bev = post_raw(live, image_files)
        message = client.next_message("/bev/grid")
        image = client.next_message("/bev/camera/front/image")
    assert message.frame_id == "vehicle"
    assert (message.pose.position.x, message.pose.position.y, message.pose.position.z) == (
        grid.x_range_m[0],
        grid.y_range_m[0],
        0,
    )
    assert (message.pose.orientation.x, message.pose.orientation.y, message.pose.orientation.z) == (0, 0, 0)
    assert message.pose.orientation.w == 1
    assert message.cell_size.x == message.cell_size.y == grid.cell_size_m
    assert message.column_count == grid.rows  # columns run along x: one per BEV row
    offsets, cells = grid_fields(message)
    assert set(offsets) == {"class_id", "red", "green", "blue", "alpha"}
    np.testing.assert_array_equal(cells[..., offsets["class_id"]], expected_cells(bev))
    assert image.format == "jpeg" and image.data == frame_set.jpeg["front"] and image.frame_id == "front_optical_frame"


def test_a_stream_frame_set_is_published_at_its_capture_time(live: LiveServer, frame_set: RenderedFrameSet) -> None:
    stamp_s = 1_700_000_000.25
    with foxglove_client(foxglove_port(live)) as client:
        client.wait_for_topics({"/bev/grid", "/bev/camera/rear/image"})
        client.subscribe("/bev/grid", "/bev/camera/rear/image")
        wait_subscribed(live, client)
        with connect(live.ws_url, max_size=None, open_timeout=TIMEOUT_S) as stream:
            stream.send(msgpack.packb({"seq": 5, "stamp": stamp_s, "images": frame_set.jpeg}, use_bin_type=True))
            reply = msgpack.unpackb(stream.recv(timeout=60))
        message = client.next_message("/bev/grid")
        image = client.next_message("/bev/camera/rear/image")
    assert reply["seq"] == 5 and "grid" in reply
    bev = np.asarray(Image.open(io.BytesIO(reply["grid"])))  # the palette PNG's values are the class ids
    _, cells = grid_fields(message)
    np.testing.assert_array_equal(cells[..., 0], expected_cells(bev))
    for stamped in (message, image):
        assert (stamped.timestamp.seconds, stamped.timestamp.nanos) == (1_700_000_000, 250_000_000)
    assert image.data == frame_set.jpeg["rear"]


def test_grid_colours_follow_the_class_table(live: LiveServer, label_files: Files) -> None:
    """Fusion only (the true label maps): a grid of many classes and the ego footprint (the default rig sees every
    other cell; unknown cells are in test_foxglove_messages.py)."""
    with foxglove_client(foxglove_port(live)) as client:
        client.wait_for_topics({"/bev/grid"})
        client.subscribe("/bev/grid")
        wait_subscribed(live, client)
        bev = post_raw(live, label_files, labels="true")
        message = client.next_message("/bev/grid")
    offsets, cells = grid_fields(message)
    ids = cells[..., offsets["class_id"]]
    np.testing.assert_array_equal(ids, expected_cells(bev))
    assert len(np.unique(ids)) >= 4 and (ids == EGO).any()
    rgb = np.stack([cells[..., offsets[c]] for c in ("red", "green", "blue")], axis=-1)
    alpha = cells[..., offsets["alpha"]]
    known = ids != UNKNOWN
    np.testing.assert_array_equal(rgb[known], palette()[ids[known]])
    assert (alpha[known] == 255).all() and (alpha[~known] == 0).all()


def test_transforms_and_calibrations_of_the_rig(live: LiveServer, default_rig: Rig) -> None:
    with foxglove_client(foxglove_port(live)) as client:
        client.wait_for_topics({"/tf", "/bev/camera/front/calibration"})
        client.subscribe("/tf", "/bev/camera/front/calibration")
        tf = client.next_message("/tf")  # republished every second while subscribed
        calibration = client.next_message("/bev/camera/front/calibration")
    by_child = {t.child_frame_id: t for t in tf.transforms}
    assert set(by_child) == {f"{name}_optical_frame" for name in default_rig.camera_names}
    front = default_rig.camera("front")
    transform = by_child["front_optical_frame"]
    assert transform.parent_frame_id == "vehicle"
    assert front.vehicle_from_camera is not None
    np.testing.assert_allclose(
        [transform.translation.x, transform.translation.y, transform.translation.z], front.vehicle_from_camera[:3, 3]
    )
    x, y, z, w = (transform.rotation.x, transform.rotation.y, transform.rotation.z, transform.rotation.w)
    rotation = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    np.testing.assert_allclose(rotation, front.vehicle_from_camera[:3, :3], atol=1e-9)
    assert calibration.frame_id == "front_optical_frame"
    assert (calibration.height, calibration.width) == front.image_size_hw
    assert calibration.distortion_model == "kannala_brandt" and len(calibration.D) == 4  # the default rig's fisheyes


def test_a_client_that_never_reads_does_not_slow_rest(live: LiveServer, image_files: Files, default_rig: Rig) -> None:
    with foxglove_client(foxglove_port(live), max_queue=1) as client:
        client.wait_for_topics({"/bev/grid", *camera_topics(default_rig)})
        client.subscribe(*(t for t in client.channels if t != "/tf"))
        wait_subscribed(live, client)
        published = metric(live, "bev_foxglove_published_total")
        post_raw(live, image_files)  # once warm
        began = time.perf_counter()
        for _ in range(6):
            post_raw(live, image_files)  # the client reads nothing: its socket buffers fill
        per_set_s = (time.perf_counter() - began) / 6
        deadline = time.monotonic() + TIMEOUT_S
        while metric(live, "bev_foxglove_published_total") + metric(live, "bev_foxglove_dropped_total") < published + 7:
            assert time.monotonic() < deadline, "the publisher did not take the frame sets"
            time.sleep(0.05)
    assert per_set_s < 2.0, f"{per_set_s:.2f} s per frame set with a stalled Foxglove client"
    assert httpx.get(live.url("/healthz")).status_code == 200


def test_nothing_is_published_without_subscribers(live: LiveServer, image_files: Files, default_rig: Rig) -> None:
    publisher = live.app.state.bev.foxglove
    deadline = time.monotonic() + TIMEOUT_S
    while any(publisher.subscribed(topic) for topic in {"/bev/grid", *camera_topics(default_rig)}):
        assert time.monotonic() < deadline, "earlier tests' subscriptions did not end"
        time.sleep(0.02)
    published = metric(live, "bev_foxglove_published_total")
    post_raw(live, image_files)
    time.sleep(0.3)
    assert metric(live, "bev_foxglove_published_total") == published


def test_drop_oldest_queue_counts_what_it_drops() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(2)
    assert [queue.put(i) for i in range(5)] == [True, True, False, False, False]
    assert queue.dropped == 3 and len(queue) == 2
    assert [queue.take(0), queue.take(0), queue.take(0)] == [3, 4, None]


@pytest.fixture
def taken_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_a_taken_port_is_a_startup_error(settings_for: Callable[..., Settings], taken_port: int) -> None:
    state = create_app(settings_for(foxglove_port=taken_port)).state.bev
    with pytest.raises(FoxgloveStartError, match=f"127.0.0.1:{taken_port}.*--foxglove-port"):
        state.start_foxglove()
    assert state.foxglove is None


def test_bev_serve_refuses_a_taken_port(
    settings_for: Callable[..., Settings], taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for()
    argv = ["serve", "--port", "0", "--model", str(settings.model), "--backend", "torch", "--foxglove-port", str(taken_port)]
    assert main(argv) == 2
    assert f"cannot start the Foxglove server on 127.0.0.1:{taken_port}" in capsys.readouterr().err


def test_off_by_default(settings_for: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_for().foxglove_port is None
    monkeypatch.setenv("BEV_FOXGLOVE_PORT", "8765")
    assert Settings().foxglove_port == 8765


def test_the_shipped_layout_shows_the_published_topics(default_rig: Rig) -> None:
    layout = json.loads((REPO / "docs" / "foxglove" / "bev-layout.json").read_text())
    panels = layout["configById"]
    three_d = panels["3D!bev"]
    assert three_d["followTf"] == "vehicle"
    assert three_d["topics"][GRID_TOPIC] == {"visible": True, "colorMode": "rgba-fields", "frameLocked": True}
    modes = [c["imageMode"] for k, c in panels.items() if k.startswith("Image!")]
    assert sorted(mode["imageTopic"] for mode in modes) == sorted(image_topic(name) for name in default_rig.camera_names)
    # Lichtblick draws no image whose calibration it cannot read (it has no kannala_brandt): the panels name none.
    assert all("calibrationTopic" not in mode for mode in modes)

    def leaves(node: Any) -> set[str]:
        return {node} if isinstance(node, str) else leaves(node["first"]) | leaves(node["second"])

    assert leaves(layout["layout"]) == set(panels)  # every panel configured is placed, and only those
