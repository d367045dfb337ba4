"""The grid, cameras and rig as Foxglove messages: layout golden values, colours, poses, calibrations."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from bev_service.calib.exchange import vehicle_from_camera
from bev_service.classes import palette
from bev_service.geometry.cameras import Intrinsics
from bev_service.geometry.grid import EGO, UNKNOWN, BevGrid, cells_along_axes
from bev_service.geometry.rig import Rig
from bev_service.service.foxglove_messages import frame_transform, grid_message, image_message
from tests.geometry.test_tables import homography_camera

SIZE_HW = (640, 960)
K = Intrinsics(fx=300.0, fy=298.0, cx=481.5, cy=318.2)


def decode(message: object) -> Message:
    """A foxglove-sdk message through its own protobuf schema, as a client decodes it."""
    schema = message.get_schema()  # type: ignore[attr-defined]
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(schema.data).file:
        pool.Add(file)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(schema.name))
    return cls.FromString(message.encode())  # type: ignore[attr-defined]


class TestGridMessage:
    # 17 rows (x) by 11 columns (y), 0.5 m cells, off-centre so that a swapped axis shows
    GRID = BevGrid(x_range_m=(-3.0, 5.5), y_range_m=(-2.0, 3.5), cell_size_m=0.5)

    def bev(self) -> np.ndarray:
        rng = np.random.default_rng(0)
        bev = rng.integers(0, 8, self.GRID.shape, dtype=np.uint8)
        bev[0, :3] = UNKNOWN
        bev[8, 5] = EGO
        return bev

    def test_golden_corners(self) -> None:
        """Grid column i runs along +x from the rear, row j along +y from the right."""
        bev = np.arange(17 * 11, dtype=np.int64).reshape(17, 11)
        cells = cells_along_axes(bev)
        assert cells.shape == (11, 17)
        assert cells[0, 0] == bev[16, 10]  # rear-most, right-most: at the pose (x_min, y_min)
        assert cells[0, 16] == bev[0, 10]  # front-most, right-most
        assert cells[10, 0] == bev[16, 0]  # rear-most, left-most
        assert cells[3, 5] == bev[17 - 1 - 5, 11 - 1 - 3]

    def test_cell_centres_are_where_the_grid_says(self) -> None:
        """Message cell (j, i) centred at pose + ((i + 1/2) s, (j + 1/2) s) is the BEV cell holding that point."""
        bev = np.arange(17 * 11, dtype=np.int64).reshape(17, 11)
        cells = cells_along_axes(bev)
        s = self.GRID.cell_size_m
        for j, i in [(0, 0), (4, 9), (10, 16), (7, 2)]:
            xy = (self.GRID.x_range_m[0] + (i + 0.5) * s, self.GRID.y_range_m[0] + (j + 0.5) * s)
            row, col = np.floor(self.GRID.cell_from_vehicle_xy(xy)).astype(int)
            assert cells[j, i] == bev[row, col]

    def test_fields_pose_and_colours(self) -> None:
        bev = self.bev()
        before = bev.copy()
        message = decode(grid_message(bev, self.GRID, 12.25))
        np.testing.assert_array_equal(bev, before)  # the grid is not modified
        assert [(f.name, f.offset) for f in message.fields] == [
            ("class_id", 0),
            ("red", 1),
            ("green", 2),
            ("blue", 3),
            ("alpha", 4),
        ]
        assert (message.column_count, message.cell_stride, message.row_stride) == (17, 5, 17 * 5)
        assert (message.pose.position.x, message.pose.position.y) == (-3.0, -2.0)
        assert message.frame_id == "vehicle" and (message.timestamp.seconds, message.timestamp.nanos) == (12, 250_000_000)
        data = np.frombuffer(message.data, np.uint8).reshape(11, 17, 5)
        np.testing.assert_array_equal(data[..., 0], cells_along_axes(bev))
        ids = data[..., 0]
        np.testing.assert_array_equal(data[..., 1:4], palette()[ids])
        np.testing.assert_array_equal(data[..., 4], np.where(ids == UNKNOWN, 0, 255))
        assert (ids == UNKNOWN).sum() == 3 and (ids == EGO).sum() == 1

    def test_a_grid_of_another_shape_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"expected a grid of shape \(17, 11\)"):
            grid_message(np.zeros((11, 17), np.uint8), self.GRID, 0.0)


def test_images_go_as_received() -> None:
    jpeg, png = b"\xff\xd8\xff\xe0 rest of a jpeg", b"\x89PNG\r\n\x1a\n rest of a png"
    assert image_message("left", jpeg, 1.0).encode() == image_message("left", jpeg, 1.0).encode()
    message = decode(image_message("left", jpeg, 1.0))
    assert (message.format, message.data, message.frame_id) == ("jpeg", jpeg, "left_optical_frame")
    assert decode(image_message("left", png, 1.0)).format == "png"
    assert image_message("left", b"GIF89a...", 1.0) is None


def test_transform_of_a_homography_camera_is_its_pose(rig: Rig) -> None:
    front = rig.camera("front")
    tied = homography_camera(front, scale=2.5)  # the homography's scale is arbitrary
    assert front.vehicle_from_camera is not None
    np.testing.assert_allclose(vehicle_from_camera(tied), front.vehicle_from_camera, atol=1e-9)
    a, b = decode(frame_transform(front, 0.0)), decode(frame_transform(tied, 0.0))
    assert (a.parent_frame_id, a.child_frame_id) == ("vehicle", "front_optical_frame")
    np.testing.assert_allclose(
        [a.rotation.w, a.rotation.x, a.rotation.y, a.rotation.z],
        [b.rotation.w, b.rotation.x, b.rotation.y, b.rotation.z],
        atol=1e-9,
    )
