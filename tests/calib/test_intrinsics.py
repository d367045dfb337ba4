"""Intrinsics: the calibration core on exact synthetic corner sets, the board, the CAM.json round trip.

The real-data acceptance test (published fisheye calibration reproduced) runs through the command
line in tests/cli/test_calib_tools.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from bev_service.calib import cvcompat
from bev_service.calib.intrinsics import (
    Board,
    View,
    calibrate_views,
    camera_from_json,
    corner_grid_problem,
    intrinsics_to_json,
)
from bev_service.calib.rigfile import rig_from_dict
from bev_service.errors import CalibrationError
from bev_service.geometry.cameras import CameraModel, FisheyeCamera, Intrinsics, PinholeCamera, RadTan
from bev_service.geometry.transforms import apply_rigid, rigid, rotation_about
from tests.conftest import DEFAULT_RIG

SIZE_HW = (500, 800)
BOARD = Board(9, 6, 0.04)
# (yaw, pitch) of the board centre off the optical axis, degrees: the views cover the image.
DIRECTIONS = [(0, 0), (40, 0), (-40, 0), (0, 30), (0, -30), (40, 25), (-40, -25), (45, -20), (-45, 20), (25, 15), (-25, -15)]


def board_views(camera: CameraModel, noise_px: float, *, distance_m: float = 0.45, spread: float = 1.0) -> list[View]:
    """Board corners as ``camera`` sees them from poses spread over the image (``DIRECTIONS`` times
    ``spread``), plus Gaussian noise."""
    rng = np.random.default_rng(0)
    corners = BOARD.object_points()
    centre = corners.mean(axis=0)
    views = []
    for i, (yaw, pitch) in enumerate(DIRECTIONS):
        towards = rotation_about("y", np.deg2rad(yaw * spread)) @ rotation_about("x", np.deg2rad(pitch * spread))
        tilt = rotation_about("x", np.deg2rad(rng.uniform(-35, 35))) @ rotation_about("y", np.deg2rad(rng.uniform(-35, 35)))
        rotation = towards @ tilt
        camera_from_board = rigid(rotation, towards @ np.array([0.0, 0.0, distance_m]) - rotation @ centre)
        pixels, valid = camera.project(apply_rigid(camera_from_board, corners))
        assert valid.all() and (pixels >= 0).all() and (pixels[:, 0] < SIZE_HW[1]).all() and (pixels[:, 1] < SIZE_HW[0]).all()
        views.append(View(f"view{i}", pixels + rng.normal(0.0, noise_px, pixels.shape)))
    return views


def max_pixel_difference(found: CameraModel, truth: CameraModel, views: list[View]) -> float:
    """Largest pixel distance between two models' projections of the rays that the views cover (the
    calibration says nothing about the rest of the image), after the rotation that best aligns the two
    ray sets: a small principal point shift and a small camera rotation look alike in any view, so
    the ray-to-pixel mapping is only defined up to a rotation (Kabsch alignment)."""
    pixels = np.concatenate([v.image_points for v in views])
    rays_true, _ = truth.unproject(pixels)
    rays_found, _ = found.unproject(pixels)
    u, _, vt = np.linalg.svd(rays_found.T @ rays_true)
    found_from_true = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    return float(np.linalg.norm(found.project(rays_true @ found_from_true.T)[0] - pixels, axis=-1).max())


FISHEYE = FisheyeCamera(Intrinsics(300.0, 298.0, 401.0, 251.0), SIZE_HW, (-0.03, 0.01, -0.005, 0.001))
PINHOLE = PinholeCamera(Intrinsics(520.0, 515.0, 395.0, 255.0), SIZE_HW, RadTan(-0.25, 0.08, 0.001, -0.0005, -0.01))


class TestBoard:
    def test_parse(self) -> None:
        assert Board.parse("8x6", 0.03) == Board(8, 6, 0.03)
        assert Board.parse(" 9 X 7 ", 1.0) == Board(9, 7, 1.0)

    @pytest.mark.parametrize(("text", "square_m"), [("8-6", 0.03), ("8x", 0.03), ("1x6", 0.03), ("8x6", 0.0)])
    def test_parse_refuses(self, text: str, square_m: float) -> None:
        with pytest.raises(CalibrationError):
            Board.parse(text, square_m)

    def test_object_points_run_along_rows_first(self) -> None:
        points = Board(3, 2, 0.1).object_points()
        np.testing.assert_allclose(points, [[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0, 0.1, 0], [0.1, 0.1, 0], [0.2, 0.1, 0]])


class TestCalibrateViews:
    def test_fisheye_recovers_a_known_camera(self) -> None:
        result = calibrate_views(board_views(FISHEYE, noise_px=0.1), BOARD.object_points(), SIZE_HW, "fisheye")
        k = result.k
        assert k[0, 0] == pytest.approx(300.0, rel=2e-3) and k[1, 1] == pytest.approx(298.0, rel=2e-3)
        assert k[0, 2] == pytest.approx(401.0, abs=0.5) and k[1, 2] == pytest.approx(251.0, abs=0.5)
        assert 0.05 < result.rms_px < 0.2  # the noise is 0.1 px per coordinate
        assert result.views_dropped == [] and len(result.views_used) == len(DIRECTIONS)
        # The distortion as a whole (not coefficient by coefficient, which trade off): same pixels
        # over the angles the views cover.
        assert max_pixel_difference(result.camera(), FISHEYE, board_views(FISHEYE, noise_px=0.0)) < 0.5

    def test_pinhole_recovers_a_known_camera(self) -> None:
        views = board_views(PINHOLE, noise_px=0.1, distance_m=0.8, spread=0.45)
        exact = board_views(PINHOLE, noise_px=0.0, distance_m=0.8, spread=0.45)
        result = calibrate_views(views, BOARD.object_points(), SIZE_HW, "pinhole")
        assert result.k[0, 0] == pytest.approx(520.0, rel=5e-3) and result.k[1, 1] == pytest.approx(515.0, rel=5e-3)
        # The principal point of a pinhole trades off against the board poses: looser than for fisheye.
        assert result.k[0, 2] == pytest.approx(395.0, abs=3.0) and result.k[1, 2] == pytest.approx(255.0, abs=3.0)
        assert max_pixel_difference(result.camera(), PINHOLE, exact) < 0.8
        assert result.rms_px < 0.2

    def test_per_view_errors_are_measured_through_the_project_camera_model(self) -> None:
        views = board_views(FISHEYE, noise_px=0.0)
        noisy = View("noisy", views[0].image_points + np.random.default_rng(3).normal(0, 2.0, views[0].image_points.shape))
        result = calibrate_views([*views[1:], noisy], BOARD.object_points(), SIZE_HW, "fisheye")
        errors = {v["image"]: v["rms_px"] for v in result.views_used}
        assert errors["noisy"] > 1.0
        assert max(e for name, e in errors.items() if name != "noisy") < errors["noisy"] / 2

    def test_a_view_opencv_cannot_initialise_is_dropped_with_its_reason(self) -> None:
        views = board_views(FISHEYE, noise_px=0.05)
        # All corners on one line: the board seen exactly edge-on. OpenCV's fisheye calibration
        # raises on it (CALIB_CHECK_COND); the calibration goes on without it.
        line = np.stack([np.linspace(100, 700, 54), np.linspace(100, 400, 54)], axis=-1)
        result = calibrate_views([*views[:5], View("edge-on", line), *views[5:]], BOARD.object_points(), SIZE_HW, "fisheye")
        assert [d["image"] for d in result.views_dropped] == ["edge-on"]
        assert "CHECK_COND" in result.views_dropped[0]["reason"]
        assert "edge-on" not in {v["image"] for v in result.views_used}
        assert result.k[0, 0] == pytest.approx(300.0, rel=2e-3)

    def test_too_few_views_is_an_error(self) -> None:
        with pytest.raises(CalibrationError, match="at least 3"):
            calibrate_views(board_views(FISHEYE, noise_px=0.1)[:2], BOARD.object_points(), SIZE_HW, "fisheye")


class TestCornerGrid:
    def test_a_real_view_passes(self) -> None:
        assert corner_grid_problem(board_views(FISHEYE, noise_px=0.1)[3].image_points, BOARD) is None

    def test_shuffled_corners_are_refused(self) -> None:
        corners = board_views(FISHEYE, noise_px=0.0)[0].image_points
        shuffled = corners[np.random.default_rng(0).permutation(len(corners))]
        assert "folded" in (corner_grid_problem(shuffled, BOARD) or "")

    def test_collinear_corners_are_refused(self) -> None:
        line = np.stack([np.linspace(100, 700, 54), np.linspace(100, 400, 54)], axis=-1)
        assert corner_grid_problem(line, BOARD) is not None


class TestCamJson:
    def test_round_trip_to_a_camera_and_a_rig(self) -> None:
        result = calibrate_views(board_views(FISHEYE, noise_px=0.1), BOARD.object_points(), SIZE_HW, "fisheye")
        data = intrinsics_to_json(result)
        assert data["image_size_hw"] == [500, 800] and data["image_size_wh"] == [800, 500]
        assert camera_from_json(data) == result.camera()
        # The rig_camera block pastes into a rig file as it is.
        rig_data = yaml.safe_load(Path(DEFAULT_RIG).read_text())
        rig_data["cameras"][0].update(data["rig_camera"])
        rig = rig_from_dict(rig_data)
        assert rig.camera("front").model == result.camera()

    def test_pinhole_json_keeps_five_coefficients(self) -> None:
        result = calibrate_views(
            board_views(PINHOLE, 0.1, distance_m=0.8, spread=0.45), BOARD.object_points(), SIZE_HW, "pinhole"
        )
        data = intrinsics_to_json(result)
        assert len(data["D"]) == 5 and data["rig_camera"]["model"]["type"] == "pinhole"
        assert camera_from_json(data) == result.camera()

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"model": "ocam"}, "model must be one of"),
            ({"D": [0.1, 0.2]}, "4 coefficients"),
            ({"K": [[300, 1.5, 400], [0, 300, 250], [0, 0, 1]]}, "skew"),
            ({"image_size_hw": [500]}, "image_size_hw"),
        ],
    )
    def test_broken_cam_json_is_refused(self, change: dict[str, object], message: str) -> None:
        data = {
            "model": "fisheye",
            "K": [[300, 0, 400], [0, 300, 250], [0, 0, 1]],
            "D": [0, 0, 0, 0],
            "image_size_hw": [500, 800],
        }
        with pytest.raises(CalibrationError, match=message):
            camera_from_json(data | change)


def test_fisheye_flags_never_take_pinhole_values() -> None:
    """On OpenCV 4 the fisheye flags live in cv2.fisheye with values of their own."""
    import cv2

    fisheye_namespace = getattr(cv2.fisheye, "CALIB_FIX_K4", None)
    expected = fisheye_namespace if fisheye_namespace is not None else cv2.CALIB_FIX_K4
    assert cvcompat.fisheye_flags("FIX_K4") == expected
