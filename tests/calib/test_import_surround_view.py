"""The surround-view-yaml importer: strip pixels worked out by hand, the source canvas as grid and ego box,
the real calibration's mat corners and undistorted K, the round trip through the rig file, malformed inputs.

Synthetic inputs are written to tmp_path in the source's own format (``synthetic_surround``); the real
files are read from ../shared/data/real through the ``real_data`` fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bev_service.calib.import_surround_view import read_camera_yaml
from bev_service.calib.importers import import_surround_view_yaml, write_imported
from bev_service.errors import CalibrationError
from bev_service.geometry.rig import Rig
from bev_service.geometry.transforms import apply_homography
from tests.calib.import_inputs import SV_NAMES, write_surround_yaml
from tests.conftest import real_folder


def ground_of(rig: Rig, name: str, pixel: tuple[float, float]) -> np.ndarray:
    hom = rig.camera(name).ground_homography
    assert hom is not None
    return apply_homography(hom.ground_from_image, np.array(pixel))[0]


# (camera, strip pixel (s, t), vehicle (x, y) in metres), by hand: canvas (u, v) centre -> x = 8 - (v + 0.5) / 100,
# y = 6 - (u + 0.5) / 100; front (u, v) = (s, t); back (1199 - s, 1599 - t); left (t, 1599 - s); right (1199 - t, s).
STRIP_GOLDEN = [
    ("front", (0, 0), (7.995, 5.995)),  # the canvas's top-left pixel
    ("front", (599.5, 549.5), (2.5, 0.0)),  # the middle of the strip's car-side edge: the ego box's front
    ("back", (0, 0), (-7.995, -5.995)),  # rotated 180: the canvas's bottom-right pixel
    ("back", (599.5, 549.5), (-2.5, 0.0)),  # the ego box's rear
    ("left", (0, 0), (-7.995, 5.995)),  # quarter turn counter-clockwise: the canvas's bottom-left pixel
    ("left", (799.5, 499.5), (0.0, 1.0)),  # the ego box's left side
    ("right", (0, 0), (7.995, -5.995)),  # quarter turn clockwise: the canvas's top-right pixel
    ("right", (799.5, 499.5), (0.0, -1.0)),  # the ego box's right side
]


class TestCanvasGeometry:
    @pytest.mark.parametrize(("name", "strip_px", "expected_xy"), STRIP_GOLDEN)
    def test_strip_pixels_land_where_worked_out(
        self, synthetic_surround: Path, name: str, strip_px: tuple[float, float], expected_xy: tuple[float, float]
    ) -> None:
        rig = import_surround_view_yaml(synthetic_surround).rig
        np.testing.assert_allclose(ground_of(rig, name, strip_px), expected_xy, atol=1e-9)

    def test_grid_and_ego_are_the_source_canvas(self, synthetic_surround: Path) -> None:
        rig = import_surround_view_yaml(synthetic_surround).rig
        assert rig.grid.x_range_m == (-8.0, 8.0) and rig.grid.y_range_m == (-6.0, 6.0)
        assert rig.grid.cell_size_m == 0.01 and rig.grid.shape == (1600, 1200)
        assert rig.ego.x_range_m == (-2.5, 2.5) and rig.ego.y_range_m == (-1.0, 1.0)
        assert rig.camera_names == SV_NAMES
        # Canvas pixel (u, v) is grid cell (row v, col u): the cell centre of (row 10, col 20) is pixel (20, 10).
        np.testing.assert_allclose(ground_of(rig, "front", (20, 10)), rig.grid.vehicle_xy_from_cell(10, 20), atol=1e-12)


class TestRealCalibration:
    def test_mat_corners(self, real_data: Path) -> None:
        """The mat's outer corners (canvas pixel edges (300, 300), (900, 300), (300, 1300), (900, 1300)) are
        strip pixel (299.5, 299.5) of every camera; through the real project_matrix they land on the mat's
        corners, 5 m ahead or behind and 3 m to the side of the car centre."""
        folder = real_folder(real_data, "surround-view-4fisheye")
        rig = import_surround_view_yaml(folder).rig
        corners = {"front": (5.0, 3.0), "right": (5.0, -3.0), "left": (-5.0, 3.0), "back": (-5.0, -3.0)}
        for name, expected in corners.items():
            project = read_camera_yaml(folder / "yaml" / f"{name}.yaml", name).project_matrix
            undistorted = apply_homography(np.linalg.inv(project), np.array([299.5, 299.5]))[0]
            np.testing.assert_allclose(ground_of(rig, name, tuple(undistorted)), expected, atol=1e-9)

    def test_undistorted_k_is_scaled_and_shifted(self, real_data: Path) -> None:
        rig = import_surround_view_yaml(real_folder(real_data, "surround-view-4fisheye")).rig
        front = rig.camera("front")
        hom = front.ground_homography
        assert hom is not None
        k = front.model.intrinsics  # type: ignore[attr-defined]
        # front.yaml: scale_xy (0.7, 0.8), shift_xy (-150, -100)
        np.testing.assert_allclose(
            hom.undistorted_k, [[k.fx * 0.7, 0, k.cx - 150], [0, k.fy * 0.8, k.cy - 100], [0, 0, 1]], rtol=1e-6
        )


class TestRoundTrip:
    def test_round_trip(self, synthetic_surround: Path, tmp_path: Path) -> None:
        imported = import_surround_view_yaml(synthetic_surround, rig_id="sv-test")
        loaded = write_imported(imported, tmp_path / "out" / "rig.yaml")
        assert loaded.fingerprint == imported.rig.fingerprint
        assert loaded.rig_id == "sv-test"
        assert "surround-view-yaml" in (tmp_path / "out" / "rig.yaml").read_text()


class TestErrors:
    @pytest.mark.parametrize(
        ("overrides", "camera", "field"),
        [
            ({"project_matrix": None}, "left", "project_matrix"),
            ({"dist_coeffs": np.zeros((3, 1))}, "left", "dist_coeffs"),
            ({"camera_matrix": np.eye(3)[:2]}, "left", "camera_matrix"),
            ({"resolution": np.array([[960], [-640]], dtype=np.int32)}, "left", "resolution"),
            ({"project_matrix": np.zeros((3, 3))}, "left", "project_matrix"),
            ({"camera_matrix": np.diag([-300.0, 300, 1])}, "left", "camera_matrix"),
        ],
    )
    def test_malformed_input_names_camera_and_field(
        self, synthetic_surround: Path, overrides: dict[str, Any], camera: str, field: str
    ) -> None:
        write_surround_yaml(synthetic_surround / "yaml", "left", **overrides)
        with pytest.raises(CalibrationError) as info:
            import_surround_view_yaml(synthetic_surround)
        assert (info.value.camera, info.value.field) == (camera, field)
        assert camera in str(info.value) and field in str(info.value)

    def test_missing_or_broken_file(self, synthetic_surround: Path) -> None:
        (synthetic_surround / "yaml" / "right.yaml").unlink()
        with pytest.raises(CalibrationError) as info:
            import_surround_view_yaml(synthetic_surround)
        assert (info.value.camera, info.value.field) == ("right", "file")
        (synthetic_surround / "yaml" / "right.yaml").write_text("%YAML:1.0\n---\ncamera_matrix: [1, 2\n")
        with pytest.raises(CalibrationError) as info:
            import_surround_view_yaml(synthetic_surround)
        assert (info.value.camera, info.value.field) == ("right", "file")
