"""The ocam-json importer: poses recovered from the virtual top-down camera, height overrides, the real
calibration against the source's own renderer, malformed intrinsics, extrinsics and heights.

Synthetic inputs put ``KDT_POSES`` (tests/calib/import_inputs.py) in the source's intrinsic/ and
extrinsic/ JSON files (``synthetic_ocam``); the real files are read from ../shared/data/real through
the ``real_data`` fixture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bev_service.calib.importers import import_ocam_json
from bev_service.errors import CalibrationError
from bev_service.geometry.transforms import invert_rigid
from tests.calib.import_inputs import KDT_POSES, write_json
from tests.conftest import real_folder

OCAM_HEIGHTS = {"front": 6.07826, "left": 6.25217, "back": 6.31014, "right": 6.28116}
OCAM_POLY = [300.0 * np.pi / 2, 300.0]  # rho = 300 (theta + pi/2): equidistant, 300 px per radian


def virtual_from_vehicle(depth: float) -> np.ndarray:
    """By hand from the source's renderer: the virtual camera looks down from ``depth`` above the origin,
    its image right is the vehicle's right (-y) and its image down is backward (-x)."""
    return np.array([[0.0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, -1, depth], [0, 0, 0, 1]])


def write_ocam_camera(folder: Path, file_name: str, camera_from_virtual: np.ndarray, **param_edits: Any) -> None:
    intrinsic = {
        "img_dist_w": 1280,
        "img_dist_h": 960,
        "cam_K": {"rows": 3, "cols": 3, "data": [[1.0, 0.0005, 640.0], [0.0002, 1, 480.0], [0, 0, 1]]},
        "cam_dist": {"rows": 1, "cols": 2, "data": [OCAM_POLY]},
    }
    intrinsic.update(param_edits)
    intrinsic = {k: v for k, v in intrinsic.items() if v is not None}
    (folder / "intrinsic").mkdir(parents=True, exist_ok=True)
    (folder / "extrinsic").mkdir(parents=True, exist_ok=True)
    write_json(folder / "intrinsic" / f"{file_name}.json", {f"{file_name}-intrinsic": {"param": intrinsic}})
    extrinsic = {"param": {"time_lag": 0, "sensor_calib": {"rows": 4, "cols": 4, "data": camera_from_virtual.tolist()}}}
    write_json(folder / "extrinsic" / f"{file_name}.json", {f"bev-to-{file_name}-extrinsic": extrinsic})


@pytest.fixture
def synthetic_ocam(tmp_path: Path) -> Path:
    folder = tmp_path / "ocam"
    for name, pose in KDT_POSES.items():
        camera_from_virtual = invert_rigid(pose) @ np.linalg.inv(virtual_from_vehicle(OCAM_HEIGHTS[name]))
        write_ocam_camera(folder, name.capitalize(), camera_from_virtual)
    return folder


def source_world2cam(
    intrinsic: dict[str, Any], camera_from_virtual: np.ndarray, depth: float, bev_px: tuple[int, int]
) -> np.ndarray:
    """The source's run_avm.cpp for one BEV pixel (j, i): the virtual point ((j - 500) 0.004 h,
    (i - 500) 0.004 h, h), into the camera, then world2cam (theta = atan(-1 / |(x, y)| / z ...))."""
    j, i = bev_px
    point = camera_from_virtual @ [(j - 500) * 0.004 * depth, (i - 500) * 0.004 * depth, depth, 1.0]
    x, y = point[0] / point[2], point[1] / point[2]
    norm = np.hypot(x, y)
    theta = np.arctan(-1 / norm)
    coefficients = np.ravel(intrinsic["cam_dist"]["data"])
    rho = sum(c * theta**n for n, c in enumerate(coefficients))
    k = intrinsic["cam_K"]["data"]
    xs, ys = x / norm * rho, y / norm * rho
    return np.array([xs * k[0][0] + ys * k[0][1] + k[0][2], xs * k[1][0] + ys + k[1][2]])


class TestPoses:
    def test_recovers_the_poses(self, synthetic_ocam: Path) -> None:
        imported = import_ocam_json(synthetic_ocam)
        rig = imported.rig
        assert rig.camera_names == ("front", "left", "back", "right")
        for name, pose in KDT_POSES.items():
            np.testing.assert_allclose(rig.camera(name).vehicle_from_camera, pose, atol=1e-9)
        assert rig.grid.shape == (1000, 1000) and rig.grid.cell_size_m == 0.025 and rig.grid.x_range_m == (-12.5, 12.5)
        model = rig.camera("left").model
        assert model.center_xy == (640.0, 480.0) and model.affine_cde == (1.0, 0.0005, 0.0002)  # type: ignore[attr-defined]
        assert "0.025 m" in imported.description and "taken as metres" in imported.description

    def test_height_override_moves_the_camera(self, synthetic_ocam: Path) -> None:
        base = import_ocam_json(synthetic_ocam).rig.camera("back").vehicle_from_camera
        raised = (
            import_ocam_json(synthetic_ocam, heights_m={"back": OCAM_HEIGHTS["back"] + 0.5})
            .rig.camera("back")
            .vehicle_from_camera
        )
        assert base is not None and raised is not None
        np.testing.assert_allclose(raised[:3, 3] - base[:3, 3], [0, 0, 0.5], atol=1e-12)
        np.testing.assert_allclose(raised[:3, :3], base[:3, :3], atol=1e-12)


class TestRealCalibration:
    def test_real_calibration_matches_the_source_renderer(self, real_data: Path) -> None:
        """A BEV pixel of the source maps to the same image pixel through our rig as through the source's own
        formula; and the cameras end up on their own sides of the car."""
        folder = real_folder(real_data, "pjlab-4ocam-parking")
        rig = import_ocam_json(folder).rig
        for cam in rig.cameras:
            file_name = cam.name.capitalize()
            intrinsic = next(iter(json.loads((folder / "intrinsic" / f"{file_name}.json").read_text()).values()))["param"]
            extrinsic = next(iter(json.loads((folder / "extrinsic" / f"{file_name}.json").read_text()).values()))
            camera_from_virtual = np.array(extrinsic["param"]["sensor_calib"]["data"])
            depth = OCAM_HEIGHTS[cam.name]
            for bev_px in [(300, 100), (700, 150), (150, 500), (850, 500), (500, 900), (250, 850)]:
                virtual = [(bev_px[0] - 500) * 0.004 * depth, (bev_px[1] - 500) * 0.004 * depth, depth, 1.0]
                if (camera_from_virtual @ virtual)[2] < 0.5:
                    continue  # the source divides by z and folds such points onto the image; we do not
                vehicle_xy = np.array([-(bev_px[1] - 500) * 0.004 * depth, -(bev_px[0] - 500) * 0.004 * depth])
                ours, _ = cam.model_pixel_from_ground(vehicle_xy)
                # 1e-3 px: the source's rotations are orthonormal to ~1e-6 only; the rig file stores proper ones.
                np.testing.assert_allclose(ours, source_world2cam(intrinsic, camera_from_virtual, depth, bev_px), atol=1e-3)
        x = {cam.name: cam.vehicle_from_camera[0, 3] for cam in rig.cameras}  # type: ignore[index]
        y = {cam.name: cam.vehicle_from_camera[1, 3] for cam in rig.cameras}  # type: ignore[index]
        assert x["front"] > 3 > -3 > x["back"] and y["left"] > 1.5 > -1.5 > y["right"]


class TestErrors:
    def test_swapped_extrinsics_fail_the_layout_check(self, synthetic_ocam: Path) -> None:
        front, back = (synthetic_ocam / "extrinsic" / f"{n}.json" for n in ("Front", "Back"))
        front_text, back_text = front.read_text(), back.read_text()
        front.write_text(back_text)
        back.write_text(front_text)
        with pytest.raises(CalibrationError) as info:
            import_ocam_json(synthetic_ocam)
        assert (info.value.camera, info.value.field) == ("front", "extrinsic")

    @pytest.mark.parametrize(
        ("edits", "field"),
        [
            ({"cam_dist": None}, "param.cam_dist"),
            ({"cam_dist": {"data": [[1.0]]}}, "param.cam_dist.data"),
            ({"cam_K": {"data": [[1.0, 0.0, 640.0]]}}, "param.cam_K.data"),
            ({"cam_K": {"data": [[1.0, 0.0, 640.0], [0.0, 2.0, 480.0]]}}, "param.cam_K.data"),
            ({"img_dist_w": -5}, "param.img_dist_w"),
            ({"img_dist_h": None}, "param.img_dist_h"),
        ],
    )
    def test_malformed_intrinsics_name_camera_and_field(self, synthetic_ocam: Path, edits: dict[str, Any], field: str) -> None:
        pose = invert_rigid(KDT_POSES["back"]) @ np.linalg.inv(virtual_from_vehicle(OCAM_HEIGHTS["back"]))
        write_ocam_camera(synthetic_ocam, "Back", pose, **edits)
        with pytest.raises(CalibrationError) as info:
            import_ocam_json(synthetic_ocam)
        assert (info.value.camera, info.value.field) == ("back", field)

    def test_malformed_extrinsics_and_heights(self, synthetic_ocam: Path) -> None:
        write_ocam_camera(synthetic_ocam, "Right", np.diag([1.0, 1.0, 2.0, 1.0]))
        with pytest.raises(CalibrationError) as info:
            import_ocam_json(synthetic_ocam)
        assert (info.value.camera, info.value.field) == ("right", "param.sensor_calib.data")
        write_ocam_camera(synthetic_ocam, "Roof", np.eye(4))
        with pytest.raises(CalibrationError) as info:
            import_ocam_json(synthetic_ocam)
        assert (info.value.camera, info.value.field) == ("roof", "height")
        (synthetic_ocam / "extrinsic" / "Roof.json").unlink()
        with pytest.raises(CalibrationError) as info:
            import_ocam_json(synthetic_ocam)
        assert (info.value.camera, info.value.field) == ("roof", "extrinsic")
