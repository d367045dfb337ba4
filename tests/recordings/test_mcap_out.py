"""BEV results as MCAP: foxglove.Grid and nav_msgs/msg/OccupancyGrid put a single distinct cell where the vehicle frame
has it (origin, axes and layout), their values map as documented, and the rig's transforms and calibrations read back."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bev_service.classes import palette
from bev_service.geometry.grid import EGO, UNKNOWN, BevGrid, cells_as_picture
from bev_service.geometry.rig import Rig
from bev_service.geometry.transforms import rotation_from_quaternion
from bev_service.recordings import gridmsg
from bev_service.recordings.mcap_out import BevMcapWriter

# Not square and not centred, so that a swapped axis or a flipped one moves the cell.
GRID = BevGrid((-6.0, 14.0), (-5.0, 7.0), 0.05)
POINT_XY_M = (3.02, -1.53)  # in the vehicle frame: ahead and to the right
PEDESTRIAN = 6
TIME_NS = 1_700_000_000 * 10**9 + 123


@pytest.fixture(scope="module")
def bev() -> np.ndarray:
    grid = np.full(GRID.shape, 1, dtype=np.uint8)  # road
    grid[:40] = UNKNOWN  # the forward-most 2 m
    grid[180:220, 90:130] = EGO
    row, col = np.floor(GRID.cell_from_vehicle_xy(POINT_XY_M)).astype(int)
    grid[row, col] = PEDESTRIAN
    return grid


@pytest.fixture(scope="module")
def written(rig: Rig, bev: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Any, Any]]]:
    """{topic: [(schema, decoded message)]} of a BEV MCAP with one grid, read back with the mcap package."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    path = tmp_path_factory.mktemp("bev") / "bev.mcap"
    with BevMcapWriter(path, replace(rig, grid=GRID), metadata={"model_sha256": "abc"}) as writer:
        writer.write_grid(TIME_NS, bev)
    topics: dict[str, list[tuple[Any, Any]]] = {}
    with path.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for schema, channel, message in reader.iter_messages(log_time_order=True):
            assert message.log_time == TIME_NS
            if channel.message_encoding == "json":
                decoded: Any = json.loads(message.data)
            else:
                decoded = DecoderFactory().decoder_for(channel.message_encoding, schema)(message.data)
            topics.setdefault(channel.topic, []).append((schema, decoded))
        metadata = {m.name: m.metadata for m in reader.iter_metadata()}
    assert metadata["bev"]["model_sha256"] == "abc" and json.loads(metadata["bev"]["grid"])["rows"] == 400
    layout = json.loads(metadata["bev"]["message_layout"])
    assert layout == {
        "frame_id": "vehicle",
        "origin_xy_m": [-6.0, -5.0],
        "width": 400,
        "height": 240,
        "cell": "message[j, i] = bev[rows - 1 - i, cols - 1 - j]",
        "columns_along": "+x",
        "rows_along": "+y",
    }
    assert json.loads(metadata["bev"]["occupancy_values"]) == {
        "background": 100, "road": 0, "lane_marking": 0, "curb_sidewalk": 0, "terrain": 0,
        "vehicle": 100, "pedestrian": 100, "static_obstacle": 100, "ego": 100, "unknown": -1,
    }  # fmt: skip
    return topics


def centre_of_only(cells: np.ndarray, value: int, origin_xy: tuple[float, float], cell_xy: tuple[float, float]) -> np.ndarray:
    """The frame position of the centre of the one message cell (row j, column i) that holds ``value``."""
    (j,), (i,) = np.nonzero(cells == value)
    return np.array([origin_xy[0] + (i + 0.5) * cell_xy[0], origin_xy[1] + (j + 0.5) * cell_xy[1]])


def test_occupancy_grid_puts_the_cell_where_the_vehicle_frame_has_it(written: dict[str, Any], bev: np.ndarray) -> None:
    [(schema, msg)] = written["/bev/occupancy"]
    assert schema.name == "nav_msgs/msg/OccupancyGrid" and schema.encoding == "ros2msg"
    assert msg.header.frame_id == "vehicle" and msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == TIME_NS
    info = msg.info
    assert (info.width, info.height) == (400, 240), "width along x (the BEV's rows), height along y (its columns)"
    assert info.resolution == pytest.approx(0.05)
    q = info.origin.orientation
    assert (q.x, q.y, q.z, q.w) == (0.0, 0.0, 0.0, 1.0)
    assert (info.origin.position.x, info.origin.position.y) == (-6.0, -5.0), "the corner of cell (0, 0): x_min, y_min"
    cells = np.asarray(msg.data, dtype=np.int8).reshape(info.height, info.width)
    assert set(np.unique(cells).tolist()) == {-1, 0, 100}, "free road, an occupied pedestrian and ego, unknown"
    # the pedestrian is the one occupied cell outside the ego box (message rows 110..149 from the right, columns
    # 180..219 from the back: bev[180:220, 90:130] mirrored)
    occupied = cells == 100
    occupied[240 - 130 : 240 - 90, 400 - 220 : 400 - 180] = False
    np.testing.assert_allclose(centre_of_only(occupied, True, (-6.0, -5.0), (0.05, 0.05)), POINT_XY_M, atol=0.025)
    # unknown is the forward-most 2 m: the last 40 message columns (largest x)
    assert (cells[:, -40:] == -1).all() and (cells[:, :-40] != -1).all()
    np.testing.assert_array_equal(cells_as_picture(cells), gridmsg.occupancy_from_bev(bev))


def test_foxglove_grid_puts_the_cell_where_the_vehicle_frame_has_it(written: dict[str, Any]) -> None:
    [(schema, msg)] = written["/bev/grid"]
    assert schema.name == "foxglove.Grid" and schema.encoding == "jsonschema"
    assert json.loads(schema.data)["properties"]["data"]["contentEncoding"] == "base64"
    assert msg["frame_id"] == "vehicle" and msg["timestamp"] == {"sec": 1_700_000_000, "nsec": 123}
    assert msg["pose"] == {"position": {"x": -6.0, "y": -5.0, "z": 0.0}, "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}}
    assert [(f["name"], f["offset"], f["type"]) for f in msg["fields"]] == [
        ("class_id", 0, 1), ("red", 1, 1), ("green", 2, 1), ("blue", 3, 1), ("alpha", 4, 1),
    ]  # fmt: skip
    assert msg["column_count"] == 400 and msg["cell_stride"] == 5 and msg["row_stride"] == 2000
    data = np.frombuffer(base64.b64decode(msg["data"]), dtype=np.uint8)
    cells = data.reshape(-1, msg["column_count"], msg["cell_stride"])
    assert cells.shape[0] == 240
    size = (msg["cell_size"]["x"], msg["cell_size"]["y"])
    np.testing.assert_allclose(centre_of_only(cells[..., 0], PEDESTRIAN, (-6.0, -5.0), size), POINT_XY_M, atol=0.025)
    pedestrian = cells[cells[..., 0] == PEDESTRIAN]
    np.testing.assert_array_equal(pedestrian, [[PEDESTRIAN, *palette()[PEDESTRIAN], 255]])
    assert (cells[cells[..., 0] == UNKNOWN][:, 4] == 0).all(), "unknown cells are transparent"
    assert (cells[cells[..., 0] == 1][:, 1:] == [*palette()[1], 255]).all()


def test_occupancy_values_are_an_occupancy_map() -> None:
    """Ground free (0), anything standing on it occupied (100), as ROS tools (RViz, nav2) read OccupancyGrid."""
    bev = np.array([[0, 1, 2, 3, 4, 5, 6, 7, EGO, UNKNOWN]], dtype=np.uint8)
    np.testing.assert_array_equal(gridmsg.occupancy_from_bev(bev), [[100, 0, 0, 0, 0, 100, 100, 100, 100, -1]])
    assert gridmsg.occupancy_from_bev(bev).dtype == np.int8
    with pytest.raises(ValueError, match="class ids below 8"):
        gridmsg.occupancy_from_bev(np.array([[9]], dtype=np.uint8))


def test_transforms_and_calibrations_of_the_rig(written: dict[str, Any], rig: Rig) -> None:
    transforms = {m["child_frame_id"]: m for _, m in written["/tf"]}
    assert sorted(transforms) == sorted(f"{c}_optical_frame" for c in rig.camera_names)
    for cam in rig.cameras:
        tf = transforms[f"{cam.name}_optical_frame"]
        assert tf["parent_frame_id"] == "vehicle"
        r = tf["rotation"]
        vehicle_from_camera = np.eye(4)
        vehicle_from_camera[:3, :3] = rotation_from_quaternion([r["w"], r["x"], r["y"], r["z"]])
        vehicle_from_camera[:3, 3] = [tf["translation"][k] for k in "xyz"]
        np.testing.assert_allclose(vehicle_from_camera, cam.vehicle_from_camera, atol=1e-12)
    front = rig.camera("front").model
    [(schema, info)] = written["/front/camera_info"]
    assert schema.name == "sensor_msgs/msg/CameraInfo" and info.header.frame_id == "front_optical_frame"
    assert info.distortion_model == "equidistant" and (info.width, info.height) == (960, 640)
    np.testing.assert_allclose(info.d, front.k)  # type: ignore[attr-defined]
    k = front.intrinsics  # type: ignore[attr-defined]
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), [[k.fx, 0, k.cx], [0, k.fy, k.cy], [0, 0, 1]])
    [(schema, calibration)] = written["/front/calibration"]
    assert schema.name == "foxglove.CameraCalibration" and calibration["distortion_model"] == "kannala_brandt"
    assert calibration["K"] == list(np.reshape(info.k, 9)) and calibration["D"] == list(info.d)


def test_a_grid_of_another_shape_is_refused(rig: Rig, tmp_path: Path) -> None:
    with BevMcapWriter(tmp_path / "x.mcap", rig) as writer, pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        writer.write_grid(0, np.zeros((3, 3), dtype=np.uint8))
