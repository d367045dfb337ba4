"""Rigid transforms, quaternions, camera mounts and homographies."""

from __future__ import annotations

import numpy as np
import pytest

from bev_service.geometry.transforms import (
    VEHICLE_FROM_FORWARD_CAMERA_ROTATION,
    apply_homography,
    apply_planar,
    apply_rigid,
    check_rotation,
    fit_homography,
    invert_rigid,
    quaternion_from_rotation,
    rigid,
    rotation_about,
    rotation_from_quaternion,
    rotation_z,
    vehicle_from_camera_mount,
)


def _random_rotations(n: int, seed: int = 0) -> list[np.ndarray]:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return [rotation_from_quaternion(v) for v in q]


class TestQuaternion:
    def test_identity_and_a_quarter_turn_about_z(self) -> None:
        np.testing.assert_allclose(rotation_from_quaternion([1, 0, 0, 0]), np.eye(3), atol=1e-15)
        half = np.sqrt(0.5)
        np.testing.assert_allclose(rotation_from_quaternion([half, 0, 0, half]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)

    def test_round_trip_through_every_branch(self) -> None:
        # Random rotations plus the half turns that make Shepperd's method pick each diagonal term.
        rotations = [*_random_rotations(200), rotation_about("x", np.pi), rotation_about("y", np.pi), rotation_about("z", np.pi)]
        for r in rotations:
            q = quaternion_from_rotation(r)
            assert q[0] >= 0 and np.linalg.norm(q) == pytest.approx(1.0)
            np.testing.assert_allclose(rotation_from_quaternion(q), r, atol=1e-12)

    def test_rejects_zero_and_non_finite(self) -> None:
        for bad in ([0, 0, 0, 0], [np.nan, 0, 0, 1], [1, 0, 0]):
            with pytest.raises(ValueError, match="quaternion"):
                rotation_from_quaternion(bad)


class TestRigid:
    def test_invert_and_apply(self) -> None:
        rng = np.random.default_rng(1)
        for r in _random_rotations(20, seed=2):
            a_from_b = rigid(r, rng.normal(size=3))
            b_from_a = invert_rigid(a_from_b)
            np.testing.assert_allclose(b_from_a @ a_from_b, np.eye(4), atol=1e-12)
            points = rng.normal(size=(7, 3))
            np.testing.assert_allclose(apply_rigid(b_from_a, apply_rigid(a_from_b, points)), points, atol=1e-12)
            np.testing.assert_allclose(apply_rigid(a_from_b, points), (a_from_b @ np.c_[points, np.ones(7)].T).T[:, :3])

    def test_check_rotation(self) -> None:
        assert check_rotation(rotation_about("z", 0.3)) is None
        assert "orthonormal" in str(check_rotation(np.diag([1.0, 1.0, 1.1])))
        assert "reflection" in str(check_rotation(np.diag([1.0, 1.0, -1.0])))
        assert "3x3" in str(check_rotation(np.eye(4)))


class TestCameraMount:
    def test_forward_camera_axes(self) -> None:
        # Camera z (optical axis) = vehicle x, camera x (right) = vehicle -y, camera y (down) = vehicle -z.
        np.testing.assert_array_equal(VEHICLE_FROM_FORWARD_CAMERA_ROTATION @ [0, 0, 1], [1, 0, 0])
        np.testing.assert_array_equal(VEHICLE_FROM_FORWARD_CAMERA_ROTATION @ [1, 0, 0], [0, -1, 0])
        np.testing.assert_array_equal(VEHICLE_FROM_FORWARD_CAMERA_ROTATION @ [0, 1, 0], [0, 0, -1])
        assert check_rotation(VEHICLE_FROM_FORWARD_CAMERA_ROTATION) is None

    def test_left_camera_pitched_down(self) -> None:
        pose = vehicle_from_camera_mount([0.95, 0.98, 1.05], yaw_deg=90.0, pitch_down_deg=55.0)
        axis = pose[:3, :3] @ [0, 0, 1]
        a = np.deg2rad(55.0)
        np.testing.assert_allclose(axis, [0.0, np.cos(a), -np.sin(a)], atol=1e-12)  # left and down
        np.testing.assert_allclose(pose[:3, :3] @ [1, 0, 0], [1.0, 0.0, 0.0], atol=1e-12)  # image right = forward
        np.testing.assert_allclose(pose[:3, 3], [0.95, 0.98, 1.05])
        assert check_rotation(pose[:3, :3]) is None

    def test_roll_turns_about_the_optical_axis(self) -> None:
        # Right-handed about the forward axis (ISO 8855 roll): positive roll takes the right side down.
        pose = vehicle_from_camera_mount([0, 0, 1], yaw_deg=0.0, pitch_down_deg=0.0, roll_deg=90.0)
        np.testing.assert_allclose(pose[:3, :3] @ [0, 0, 1], [1, 0, 0], atol=1e-12)
        np.testing.assert_allclose(pose[:3, :3] @ [1, 0, 0], [0, 0, -1], atol=1e-12)


class TestHomography:
    H = np.array([[1.2, 0.1, 3.0], [-0.2, 0.9, -1.0], [1e-3, -2e-3, 1.0]])

    def test_apply_returns_points_and_the_homogeneous_scale(self) -> None:
        pts = np.array([[10.0, 20.0], [-5.0, 7.0]])
        mapped, w = apply_homography(self.H, pts)
        full = (self.H @ np.c_[pts, np.ones(2)].T).T
        np.testing.assert_allclose(mapped, full[:, :2] / full[:, 2:])
        np.testing.assert_allclose(w, full[:, 2])

    def test_fit_is_exact_on_four_points_and_on_many(self) -> None:
        rng = np.random.default_rng(3)
        for n in (4, 30):
            src = rng.uniform(0, 900, size=(n, 2))
            dst = apply_homography(self.H, src)[0]
            fitted = fit_homography(src, dst)
            np.testing.assert_allclose(fitted, self.H / self.H[2, 2], rtol=1e-7, atol=1e-9)

    def test_fit_rejects_degenerate_input(self) -> None:
        with pytest.raises(ValueError, match="collinear"):
            fit_homography([[0, 0], [1, 1], [2, 2], [5, 0]], [[0, 0], [1, 1], [2, 2], [5, 0]])
        with pytest.raises(ValueError, match="N >= 4"):
            fit_homography([[0, 0], [1, 1], [2, 2]], [[0, 0], [1, 1], [2, 2]])


class TestPlanar:
    def test_rotation_z_matches_rotation_about_z_and_vectorises(self) -> None:
        yaws = np.array([0.0, 0.3, -2.0, np.pi])
        stacked = rotation_z(yaws)
        assert stacked.shape == (4, 2, 2)
        for yaw, r in zip(yaws, stacked, strict=True):
            np.testing.assert_array_equal(r, rotation_about("z", yaw)[:2, :2])

    def test_apply_planar_is_the_hand_written_form_bit_for_bit(self) -> None:
        rng = np.random.default_rng(0)
        points = rng.normal(size=(50, 3)) * 20
        yaw, tx, ty = 0.7, 3.5, -1.25
        c, s = np.cos(yaw), np.sin(yaw)
        x, y = points[:, 0], points[:, 1]
        world_from_actor = rotation_z(yaw)
        moved = apply_planar(world_from_actor, points, (tx, ty))
        np.testing.assert_array_equal(moved, np.stack([tx + c * x - s * y, ty + s * x + c * y, points[:, 2]], axis=1))
        actor_from_world = world_from_actor.T
        back = apply_planar(actor_from_world, points[:, :2])
        np.testing.assert_array_equal(back, np.stack([c * x + s * y, -s * x + c * y], axis=1))
        np.testing.assert_allclose(apply_planar(actor_from_world, moved[:, :2] - (tx, ty)), points[:, :2], atol=1e-12)

    def test_apply_planar_agrees_with_apply_rigid(self) -> None:
        points = np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 0.0]])
        world_from_actor = rigid(rotation_about("z", 1.1), [2.0, -3.0, 0.0])
        np.testing.assert_allclose(
            apply_planar(rotation_z(1.1), points, (2.0, -3.0)), apply_rigid(world_from_actor, points), atol=1e-12
        )
