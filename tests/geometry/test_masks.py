"""What a camera cannot see: the car's body (the rig's ego box with a height) and the pixels its mask
hides. Neither ever owns a BEV cell: ownership passes to the next camera that sees the cell, and a cell
only hidden pixels see is unknown."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bev_service.geometry.grid import BODY_CLEARANCE_M, EgoBox
from bev_service.geometry.rig import Camera, GroundHomography, Rig
from bev_service.geometry.tables import NO_CAMERA, GroundTables, build_ground_tables

BOX = EgoBox((-2.0, 2.0), (-1.0, 1.0), height_m=1.5)


@pytest.fixture(scope="module")
def body_rig(rig: Rig) -> Rig:
    """The default rig with its body: the footprint box up to 1.5 m (as it ships)."""
    return dataclasses.replace(rig, ego=dataclasses.replace(rig.ego, height_m=1.5))


@pytest.fixture(scope="module")
def tables(body_rig: Rig) -> GroundTables:
    return build_ground_tables(body_rig)


class TestBody:
    def test_a_ray_across_the_body_is_hidden_and_one_past_it_is_not(self) -> None:
        above_rear = np.array([-2.0, 0.0, 0.9])  # on the rear face
        assert BOX.hides(above_rear, np.array([[-1.0, 1.4]]))[0], "beside the rear wheel: through the body"
        assert not BOX.hides(above_rear, np.array([[-5.0, 0.3]]))[0], "behind the car"
        roof = np.array([0.0, 0.0, 3.0])  # well above the body
        assert not BOX.hides(roof, np.array([[0.0, 5.0]]))[0] and BOX.hides(roof, np.array([[0.0, 1.2]]))[0]

    def test_a_camera_just_inside_the_body_sees_past_its_own_surface(self) -> None:
        """Within BODY_CLEARANCE_M of a face the camera looks out through it, as if on it: grazing rays
        along that face are not hidden (the default front camera sits 5 cm behind its face)."""
        mirror = np.array([0.9, 0.98, 1.05])
        assert not BOX.hides(mirror, np.array([[0.9, 1.3], [0.9, 4.0]])).any()
        assert BOX.hides(mirror, np.array([[0.9, -2.0]]))[0], "across the car"
        bumper = np.array([1.95, 0.0, 0.8])
        assert not BOX.hides(bumper, np.array([[2.5, 3.0], [2.1, 2.0], [2.6, 5.0]])).any()
        assert BOX.hides(bumper, np.array([[0.0, 3.0]]))[0], "beside the car, behind the bumper"
        deep = np.array([0.9, 0.98 - 2 * BODY_CLEARANCE_M, 1.05])
        assert BOX.hides(deep, np.array([[0.9, 1.3]]))[0]

    def test_rays_parallel_to_a_face_and_no_height(self) -> None:
        beside = np.array([0.0, 1.5, 1.0])  # beside the body, looking straight down: parallel to x and y faces
        assert not BOX.hides(beside, np.array([[0.0, 1.5]]))[0]
        assert not EgoBox((-2.0, 2.0), (-1.0, 1.0)).hides(np.array([-2.0, 0.0, 0.9]), np.array([[-1.0, 1.4]])).any()

    def test_no_cell_of_the_default_rig_is_owned_through_the_body(self, body_rig: Rig, tables: GroundTables) -> None:
        rig = body_rig
        centres = rig.grid.cell_centres()
        for i, cam in enumerate(rig.cameras):
            owned = tables.owner == i
            assert not rig.ego.hides(cam.centre, centres[owned]).any(), cam.name

    def test_a_homography_camera_is_hidden_like_its_pose(self, body_rig: Rig) -> None:
        """The camera's centre comes out of its ground homography, so the body hides the same cells."""
        rear = body_rig.camera("rear")
        assert rear.vehicle_from_camera is not None
        camera_from_vehicle = np.linalg.inv(rear.vehicle_from_camera)
        r, t = camera_from_vehicle[:3, :3], camera_from_vehicle[:3, 3]
        k = np.array([[250.0, 0.0, 480.0], [0.0, 240.0, 320.0], [0.0, 0.0, 1.0]])
        tied = Camera(
            "rear",
            rear.model,
            ground_homography=GroundHomography(3.0 * np.linalg.inv(k @ np.column_stack([r[:, 0], r[:, 1], t])), k),
        )
        np.testing.assert_allclose(tied.centre, rear.centre, atol=1e-9)
        centres = body_rig.grid.cell_centres()
        np.testing.assert_array_equal(body_rig.ego.hides(tied.centre, centres), body_rig.ego.hides(rear.centre, centres))

    def test_the_rear_wheel_cells_go_to_the_side_cameras(self, rig: Rig, tables: GroundTables) -> None:
        """Without the body the rear camera would own the ground beside the rear wheels, seen through the car."""
        flat = build_ground_tables(dataclasses.replace(rig, ego=dataclasses.replace(rig.ego, height_m=None)))
        xy = rig.grid.cell_centres()
        beside = (xy[..., 0] > -2.0) & (xy[..., 0] < -1.0) & (np.abs(xy[..., 1]) > 1.1) & (np.abs(xy[..., 1]) < 1.6)
        rear, left, right = (rig.camera_names.index(n) for n in ("rear", "left", "right"))
        assert (flat.owner[beside] == rear).sum() > 100, "the case this guards against"
        assert not (tables.owner[beside] == rear).any()
        assert np.isin(tables.owner[beside], [left, right]).all()


class TestMask:
    def test_a_masked_pixel_never_owns_a_cell(self, body_rig: Rig, tables: GroundTables) -> None:
        """The rear camera's lower third masked (its bumper in view): no rear-owned cell reads a pixel there;
        the cells it gave up go to other cameras or become unknown, never to a masked pixel."""
        rig = body_rig
        rear_index = rig.camera_names.index("rear")
        rear = rig.cameras[rear_index]
        h, w = rear.image_size_hw
        mask = np.ones((h, w), bool)
        mask[2 * h // 3 :] = False
        masked = dataclasses.replace(
            rig, cameras=tuple(dataclasses.replace(c, mask=mask) if c is rear else c for c in rig.cameras)
        )
        after = build_ground_tables(masked)
        owned = after.owner == rear_index
        rows = np.rint(after.pixel_uv[rear_index][owned][:, 1]).astype(int)
        assert owned.any() and (rows < 2 * h // 3).all()
        given_up = (tables.owner == rear_index) & ~owned
        assert given_up.sum() > 500
        taken = after.owner[given_up]
        assert (taken != NO_CAMERA).any() and (taken == NO_CAMERA).any()
        for i in np.unique(taken[taken != NO_CAMERA]):  # taken by a camera that sees them
            assert after.seen[i][given_up & (after.owner == i)].all()
        unknown = given_up & (after.owner == NO_CAMERA)  # only the masked pixels saw these
        assert not after.seen[:, unknown].any() and tables.seen[rear_index][unknown].all()

    def test_a_mask_must_fit_the_image_and_leave_some_pixels(self, rig: Rig) -> None:
        cam = rig.cameras[0]
        with pytest.raises(ValueError, match="mask of shape"):
            Camera(cam.name, cam.model, vehicle_from_camera=cam.vehicle_from_camera, mask=np.ones((10, 10), bool))
        with pytest.raises(ValueError, match="hides every pixel"):
            Camera(cam.name, cam.model, vehicle_from_camera=cam.vehicle_from_camera, mask=np.zeros(cam.image_size_hw, bool))

    def test_the_mask_is_part_of_the_fingerprint(self, rig: Rig) -> None:
        cam = rig.cameras[0]
        mask = np.ones(cam.image_size_hw, bool)
        mask[:10] = False
        masked = dataclasses.replace(rig, cameras=(dataclasses.replace(cam, mask=mask), *rig.cameras[1:]))
        assert masked.fingerprint != rig.fingerprint and masked != rig
