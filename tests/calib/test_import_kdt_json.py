"""The kdt-json importer: any named ground axes give the same vehicle geometry, units from the file or
``units_m``, the ego box from the camera footprint, the real calibration, malformed inputs.

Synthetic inputs are ``KDT_POSES`` written by ``kdt_document`` (tests/calib/import_inputs.py); the real
file is read from ../shared/data/real through the ``real_data`` fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bev_service.calib.importers import import_kdt_json, write_imported
from bev_service.errors import CalibrationError
from tests.calib.import_inputs import KDT_POSES, kdt_broken, kdt_document, write_json
from tests.conftest import real_folder


class TestGroundAxes:
    @pytest.mark.parametrize(
        "ground_axes",
        [
            {"x": "right", "y": "forward", "z": "up"},
            {"x": "forward", "y": "left", "z": "up"},
            {"x": "back", "y": "right", "z": "up"},
            {"x": "left", "y": "down", "z": "back"},
        ],
    )
    def test_any_ground_axes_give_the_same_vehicle_geometry(self, tmp_path: Path, ground_axes: dict[str, str]) -> None:
        path = write_json(tmp_path / "calib.json", kdt_document(ground_axes, units_m=1.0, file_units_per_m=1.0))
        rig = import_kdt_json(path).rig
        for name, pose in KDT_POSES.items():
            np.testing.assert_allclose(rig.camera(name).vehicle_from_camera, pose, atol=1e-12)
        assert rig.grid.shape == (200, 200) and rig.grid.x_range_m == (-10.0, 10.0)


class TestUnits:
    def test_units_from_file_and_override(self, tmp_path: Path) -> None:
        # Lengths in centimetres, said by the file.
        path = write_json(tmp_path / "cm.json", kdt_document({"x": "right", "y": "forward", "z": "up"}, 0.01, 100.0))
        imported = import_kdt_json(path)
        np.testing.assert_allclose(imported.rig.camera("left").vehicle_from_camera, KDT_POSES["left"], atol=1e-9)
        assert imported.rig.grid.cell_size_m == pytest.approx(0.1) and imported.rig.grid.x_range_m == pytest.approx((-10, 10))
        assert "0.01 m per file unit (units_m in the file)" in imported.description
        # --units-m wins over the file: every length doubles.
        doubled = import_kdt_json(path, units_m=0.02)
        np.testing.assert_allclose(doubled.rig.camera("left").vehicle_from_camera[:3, 3], 2 * KDT_POSES["left"][:3, 3], atol=1e-9)
        assert doubled.rig.grid.x_range_m == pytest.approx((-20, 20))
        assert "--units-m" in doubled.description

    def test_unknown_units_are_said_in_the_description(self, tmp_path: Path) -> None:
        path = write_json(tmp_path / "u.json", kdt_document({"x": "right", "y": "forward", "z": "up"}, None, 10.0))
        imported = import_kdt_json(path)
        np.testing.assert_allclose(
            imported.rig.camera("front").vehicle_from_camera[:3, 3], 10 * KDT_POSES["front"][:3, 3], atol=1e-9
        )
        assert "the file's own units" in imported.description


class TestEgoBox:
    def test_ego_box_is_the_camera_footprint(self, tmp_path: Path) -> None:
        path = write_json(tmp_path / "c.json", kdt_document({"x": "right", "y": "forward", "z": "up"}, 1.0, 1.0))
        imported = import_kdt_json(path)
        assert imported.rig.ego.x_range_m == pytest.approx((-2.2, 2.0))
        assert imported.rig.ego.y_range_m == pytest.approx((-1.0, 1.0))
        assert "bounding box of the camera positions" in imported.description


class TestRealCalibration:
    def test_real_calibration(self, real_data: Path, tmp_path: Path) -> None:
        path = real_folder(real_data, "pjlab-4fisheye-road") / "calibration_from_source.json"
        imported = import_kdt_json(path)
        rig = imported.rig
        positions = {cam.name: cam.vehicle_from_camera[:3, 3] for cam in rig.cameras if cam.vehicle_from_camera is not None}
        assert positions["front"][0] > 15 and positions["back"][0] < -15  # ground y forward became vehicle x
        assert positions["left"][1] > 5 and positions["right"][1] < -5  # ground x right became vehicle -y
        assert all(17 < p[2] < 20 for p in positions.values())  # "about 18 units high"
        assert rig.grid.shape == (1000, 1000) and rig.grid.cell_size_m == pytest.approx(0.15)
        assert rig.camera("front").image_size_hw == (1080, 1280)
        # The front camera looks forward and down.
        axis = rig.camera("front").vehicle_from_camera[:3, 2]  # type: ignore[index]
        assert axis[0] > 0.5 and axis[2] < -0.5
        assert write_imported(imported, tmp_path / "road.yaml").fingerprint == rig.fingerprint


class TestErrors:
    @pytest.mark.parametrize(
        ("edit", "camera", "field"),
        [
            (lambda d: d["cameras"]["left"].pop("K"), "left", "K"),
            (lambda d: d["cameras"]["left"].update(D=[0.1, 0.2]), "left", "D"),
            (
                lambda d: d["cameras"]["back"].update(T_camera_from_ground=np.eye(4)[:3].tolist()),
                "back",
                "T_camera_from_ground",
            ),
            (
                lambda d: d["cameras"]["back"].update(T_camera_from_ground=(2 * np.eye(4)).tolist()),
                "back",
                "T_camera_from_ground",
            ),
            (lambda d: d["cameras"]["back"].update(K="not a matrix"), "back", "K"),
            (lambda d: d["ground_axes"].update(x="sideways"), None, "ground_axes.x"),
            (lambda d: d["ground_axes"].update(y="right"), None, "ground_axes"),
            # A left-handed ground frame that the (right-handed) T matrices do not share mirrors the cameras.
            (lambda d: d["ground_axes"].update(x="left"), "front", "ground_axes"),
            (lambda d: d.update(format="other"), None, "format"),
            (lambda d: d.pop("grid"), None, "grid"),
            (lambda d: d["grid"].update(cell_size=-1), None, "grid"),
            (lambda d: d.update(units_m=-2), None, "units_m"),
            (lambda d: d.pop("image_size_wh"), "front", "image_size_wh"),
        ],
    )
    def test_malformed_input_names_camera_and_field(self, tmp_path: Path, edit: Any, camera: str | None, field: str) -> None:
        with pytest.raises(CalibrationError) as info:
            import_kdt_json(kdt_broken(tmp_path, edit))
        assert (info.value.camera, info.value.field) == (camera, field)

    def test_not_json(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.json"
        path.write_text("{not json")
        with pytest.raises(CalibrationError, match="not valid JSON"):
            import_kdt_json(path)
