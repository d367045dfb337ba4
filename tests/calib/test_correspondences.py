"""Ground homography and pose from image-ground pairs, made with the default rig's pose-calibrated cameras."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bev_service.calib.correspondences import (
    GroundPoints,
    fit_ground_homography,
    fit_ground_pose,
    homography_to_json,
    load_points,
    points_from_dict,
    pose_to_json,
)
from bev_service.calib.rigfile import load_rig, rig_from_dict
from bev_service.errors import CalibrationError
from bev_service.geometry.cameras import FisheyeCamera
from bev_service.geometry.rig import Camera, GroundHomography
from bev_service.geometry.transforms import apply_rigid
from tests.conftest import DEFAULT_RIG

RIG = load_rig(DEFAULT_RIG)
CAMERAS = RIG.camera_names


def cam_json(camera: Camera) -> dict[str, Any]:
    """The CAM.json content of a rig camera's model (what `bev calib intrinsics` writes)."""
    model = camera.model
    assert isinstance(model, FisheyeCamera)
    return {
        "model": "fisheye",
        "K": model.intrinsics.matrix.tolist(),
        "D": list(model.k),
        "image_size_hw": list(model.image_size_hw),
    }


def ground_patch(camera: Camera, near_m: float, far_m: float, half_width_m: float, n: int = 4) -> np.ndarray:
    """(n * n, 2) ground points in front of a camera: from ``near_m`` to ``far_m`` along its horizontal
    viewing direction, ``half_width_m`` to either side."""
    assert camera.vehicle_from_camera is not None
    position = camera.vehicle_from_camera[:2, 3]
    forward = camera.vehicle_from_camera[:2, 2] / np.linalg.norm(camera.vehicle_from_camera[:2, 2])
    side = np.array([-forward[1], forward[0]])
    along, across = np.meshgrid(np.linspace(near_m, far_m, n), np.linspace(-half_width_m, half_width_m, n), indexing="ij")
    return (position + along[..., None] * forward + across[..., None] * side).reshape(-1, 2)


def distorted_points(camera: Camera, ground: np.ndarray, noise_px: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """A points-file mapping: the raw (distorted) pixels where ``camera`` sees ``ground``, with intrinsics."""
    pixels, valid = camera.pixel_from_ground(ground)
    assert valid.all()
    pixels = pixels + np.random.default_rng(seed).normal(0.0, noise_px, pixels.shape)
    return {
        "camera": camera.name,
        "intrinsics": cam_json(camera),
        "points": [
            {"name": f"p{i}", "image_px": p.tolist(), "ground_m": g.tolist()}
            for i, (p, g) in enumerate(zip(pixels, ground, strict=True))
        ],
    }


def true_ground_from_undistorted(camera: Camera) -> np.ndarray:
    """Analytic homography of a posed camera: undistorted pixel = K [r1 r2 t] (x, y, 1)."""
    k = camera.model.intrinsics.matrix  # type: ignore[attr-defined]
    camera_from_vehicle = camera.camera_from_vehicle
    image_from_ground = k @ np.column_stack([camera_from_vehicle[:3, 0], camera_from_vehicle[:3, 1], camera_from_vehicle[:3, 3]])
    return np.linalg.inv(image_from_ground)


def normalised(h: np.ndarray) -> np.ndarray:
    return h / h[2, 2]


class TestHomography:
    @pytest.mark.parametrize("name", CAMERAS)
    def test_exact_recovery_from_undistorted_points(self, name: str) -> None:
        camera = RIG.camera(name)
        truth = true_ground_from_undistorted(camera)
        ground = ground_patch(camera, 1.0, 4.0, 2.0)
        undistorted = np.linalg.inv(truth) @ np.c_[ground, np.ones(len(ground))].T  # (3, N)
        pixels = (undistorted[:2] / undistorted[2]).T
        points = GroundPoints(pixels, ground, tuple(f"p{i}" for i in range(len(ground))))
        fit = fit_ground_homography(points)
        np.testing.assert_allclose(normalised(fit.ground_from_image), normalised(truth), rtol=1e-8, atol=1e-10)
        assert fit.max_cm < 1e-6 and fit.undistorted_k is None

    @pytest.mark.parametrize("name", CAMERAS)
    def test_distorted_points_with_intrinsics_warp_the_ground_like_the_pose(self, name: str) -> None:
        camera = RIG.camera(name)
        points = points_from_dict(distorted_points(camera, ground_patch(camera, 1.0, 4.0, 2.0)))
        fit = fit_ground_homography(points)
        assert fit.rms_cm < 1e-6
        homography_camera = Camera(
            name, camera.model, ground_homography=GroundHomography(fit.ground_from_image, fit.undistorted_k)
        )
        # Everywhere the camera sees the ground (not only at the measured points), the same pixel.
        test = ground_patch(camera, 0.5, 8.0, 6.0, n=15)
        expected, seen = camera.pixel_from_ground(test)
        got, seen_too = homography_camera.pixel_from_ground(test)
        assert seen.sum() > 100
        np.testing.assert_array_equal(seen, seen_too)
        np.testing.assert_allclose(got[seen], expected[seen], atol=1e-6)

    def test_noise_shows_as_ground_error_in_cm(self) -> None:
        camera = RIG.camera("left")
        ground = ground_patch(camera, 1.0, 4.0, 2.5, n=5)
        fit = fit_ground_homography(points_from_dict(distorted_points(camera, ground, noise_px=0.5)))
        # Half a pixel at 1 to 4 m from a 300 px fisheye is a few millimetres to a few centimetres.
        assert 0.05 < fit.rms_cm < 3.0
        assert fit.max_cm >= fit.rms_cm
        assert fit.errors_cm.shape == (25,)

    def test_ransac_leaves_out_mismeasured_points(self) -> None:
        camera = RIG.camera("front")
        data = distorted_points(camera, ground_patch(camera, 1.0, 5.0, 2.5, n=5), noise_px=0.05)
        for i in (3, 17):  # two tape marks measured 70 cm off
            data["points"][i]["ground_m"][0] += 0.7
        points = points_from_dict(data)
        plain = fit_ground_homography(points)
        robust = fit_ground_homography(points, ransac_cm=5.0)
        assert plain.rms_cm > 10.0
        assert robust.rms_cm < 1.0
        assert np.nonzero(~robust.inliers)[0].tolist() == [3, 17]
        assert homography_to_json(points, robust, 5.0)["outliers"] == ["p3", "p17"]

    def test_result_drops_into_a_rig(self) -> None:
        camera = RIG.camera("rear")
        points = points_from_dict(distorted_points(camera, ground_patch(camera, 1.0, 4.0, 2.0)))
        out = homography_to_json(points, fit_ground_homography(points))
        rig_data = yaml.safe_load(Path(DEFAULT_RIG).read_text())
        rig_data["cameras"][2] = out["rig_camera"]
        rig = rig_from_dict(rig_data)
        test = ground_patch(camera, 0.5, 6.0, 4.0, n=9)
        np.testing.assert_allclose(rig.camera("rear").pixel_from_ground(test)[0], camera.pixel_from_ground(test)[0], atol=1e-6)
        assert json.loads(json.dumps(out))["rms_cm"] < 1e-6


class TestDegenerateInput:
    def make(self, ground: list[list[float]], pixels: list[list[float]] | None = None) -> dict[str, Any]:
        pixels = pixels or [[100.0 + 50 * i, 300.0 + 7 * i * i] for i in range(len(ground))]
        return {"points": [{"image_px": p, "ground_m": g} for p, g in zip(pixels, ground, strict=True)]}

    def test_fewer_than_four_points(self) -> None:
        with pytest.raises(CalibrationError, match="at least 4 point pairs, got 3"):
            points_from_dict(self.make([[1, 0], [2, 0], [2, 1]]))

    def test_all_points_on_one_line(self) -> None:
        with pytest.raises(CalibrationError, match="one line"):
            points_from_dict(self.make([[1, 0], [2, 0], [3, 0], [4, 0], [5, 0]]))

    def test_three_of_four_points_on_one_line(self) -> None:
        with pytest.raises(CalibrationError, match=r"'#0', '#1' and '#2' lie on one line"):
            points_from_dict(self.make([[1, 0], [2, 0], [3, 0], [2, 1]]))

    def test_repeated_point(self) -> None:
        with pytest.raises(CalibrationError, match="same position"):
            points_from_dict(self.make([[1, 0], [2, 0], [2, 1], [1, 0], [3, 2]]))

    def test_image_points_on_one_line(self) -> None:
        data = self.make([[1, 0], [2, 0], [2, 1], [1, 1]], [[100, 100], [200, 200], [300, 300], [400, 400]])
        with pytest.raises(CalibrationError, match=r"image_px.*one line"):
            fit_ground_homography(points_from_dict(data))

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"points": [{"image_px": [1, 2]}]}, "points.0.ground_m"),
            ({"intrinsic": "cam.json"}, "intrinsic"),
            ({"intrinsics": {"model": "fisheye", "K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}}, "intrinsics"),
        ],
    )
    def test_broken_points_file_names_the_field(self, change: dict[str, Any], field: str) -> None:
        data = self.make([[1, 0], [2, 0], [2, 1], [1, 1]]) | change
        with pytest.raises(CalibrationError, match=f"field '{field}'"):
            points_from_dict(data)

    def test_intrinsics_path_is_relative_to_the_points_file(self, tmp_path: Path) -> None:
        camera = RIG.camera("front")
        (tmp_path / "front_cam.json").write_text(json.dumps(cam_json(camera)))
        data = distorted_points(camera, ground_patch(camera, 1.0, 4.0, 2.0)) | {"intrinsics": "front_cam.json"}
        (tmp_path / "points.json").write_text(json.dumps(data))
        loaded = load_points(tmp_path / "points.json").camera
        assert isinstance(loaded, FisheyeCamera) and isinstance(camera.model, FisheyeCamera)
        assert (loaded.intrinsics, loaded.k) == (camera.model.intrinsics, camera.model.k)


class TestPose:
    @pytest.mark.parametrize("name", CAMERAS)
    def test_exact_recovery(self, name: str) -> None:
        camera = RIG.camera(name)
        fit = fit_ground_pose(points_from_dict(distorted_points(camera, ground_patch(camera, 1.0, 4.0, 2.0))))
        np.testing.assert_allclose(fit.vehicle_from_camera, camera.vehicle_from_camera, atol=1e-8)
        assert fit.max_px < 1e-6

    def test_noisy_points_give_the_pose_within_centimetres(self) -> None:
        camera = RIG.camera("right")
        assert camera.vehicle_from_camera is not None
        fit = fit_ground_pose(points_from_dict(distorted_points(camera, ground_patch(camera, 0.8, 5.0, 3.0, n=5), noise_px=0.3)))
        assert np.linalg.norm(fit.vehicle_from_camera[:3, 3] - camera.vehicle_from_camera[:3, 3]) < 0.03
        rotation_error = fit.vehicle_from_camera[:3, :3].T @ camera.vehicle_from_camera[:3, :3]
        assert np.degrees(np.arccos(np.clip((np.trace(rotation_error) - 1) / 2, -1, 1))) < 0.5
        assert 0.15 < fit.rms_px < 0.5

    def test_points_far_off_axis_count(self) -> None:
        """Ground far ahead of and behind a side camera, 80-85 degrees off its axis: the refinement works
        in pixels through the fisheye model, so such points constrain the pose too."""
        camera = RIG.camera("left")
        far = np.array([[12.0, 1.1], [-11.0, 1.05], [9.0, 1.2], [-9.0, 1.2]])
        rays = apply_rigid(camera.camera_from_vehicle, np.c_[far, np.zeros(len(far))])
        assert np.degrees(np.arccos(rays[:, 2] / np.linalg.norm(rays, axis=1))).max() > 85.0
        points = points_from_dict(distorted_points(camera, np.concatenate([ground_patch(camera, 1.0, 3.0, 1.5, n=2), far])))
        fit = fit_ground_pose(points)
        np.testing.assert_allclose(fit.vehicle_from_camera, camera.vehicle_from_camera, atol=1e-8)
        out = pose_to_json(points, fit)
        rig_data = yaml.safe_load(Path(DEFAULT_RIG).read_text())
        rig_data["cameras"][1] = out["rig_camera"]
        assert rig_from_dict(rig_data).camera("left").vehicle_from_camera == pytest.approx(camera.vehicle_from_camera, abs=1e-8)

    def test_pose_needs_intrinsics(self) -> None:
        camera = RIG.camera("front")
        data = distorted_points(camera, ground_patch(camera, 1.0, 4.0, 2.0))
        del data["intrinsics"]
        with pytest.raises(CalibrationError, match="intrinsics"):
            fit_ground_pose(points_from_dict(data))


def test_pose_points_are_the_camera_frame_seen_from_the_rig() -> None:
    """Sanity of the fixtures: the patch lies in front of each camera (positive depth)."""
    for camera in RIG.cameras:
        assert (apply_rigid(camera.camera_from_vehicle, np.c_[ground_patch(camera, 1.0, 4.0, 2.0), np.zeros(16)])[:, 2] > 0).all()
