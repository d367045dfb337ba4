"""``bev calib import`` (bev_service/cli/calib_import.py) through the real entry point: each format's
dispatch and options, broken calibrations reported, and an imported real rig fed to ``bev project``."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from bev_service.calib.rigfile import load_rig
from bev_service.cli.main import main
from tests.calib.import_inputs import KDT_POSES, kdt_broken, kdt_document, write_json
from tests.conftest import real_folder


class TestCalibImport:
    def test_imports_surround_view(self, synthetic_surround: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        out = tmp_path / "rigs" / "sv.yaml"
        assert main(["calib", "import", "surround-view-yaml", str(synthetic_surround), "--out", str(out), "--rig-id", "sv1"]) == 0
        assert load_rig(out).rig_id == "sv1"
        assert "wrote" in capsys.readouterr().out

    def test_imports_kdt_json_with_units(self, tmp_path: Path) -> None:
        path = write_json(tmp_path / "calib.json", kdt_document({"x": "right", "y": "forward", "z": "up"}, None, 100.0))
        out = tmp_path / "kdt.yaml"
        assert main(["calib", "import", "kdt-json", str(path), "--units-m", "0.01", "--out", str(out)]) == 0
        rig = load_rig(out)
        np.testing.assert_allclose(rig.camera("right").vehicle_from_camera, KDT_POSES["right"], atol=1e-6)
        assert rig.grid.x_range_m == pytest.approx((-10.0, 10.0))

    def test_reports_a_broken_calibration(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = kdt_broken(tmp_path, lambda d: d["cameras"]["left"].pop("D"))
        out = tmp_path / "never.yaml"
        assert main(["calib", "import", "kdt-json", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "camera 'left'" in err and "field 'D'" in err
        assert not out.exists()
        assert main(["calib", "import", "ocam-json", str(tmp_path), "--height", "front=high", "--out", str(out)]) == 2


class TestImportThenProject:
    def test_real_parking(self, real_data: Path, tmp_path: Path) -> None:
        """``bev calib import ocam-json`` then ``bev project`` with the real images: the PNG and its JSON."""
        folder = real_folder(real_data, "pjlab-4ocam-parking")
        rig_path = tmp_path / "parking.yaml"
        args = ["calib", "import", "ocam-json", str(folder), "--cells", "200", "--cell-size-m", "0.1", "--height", "front=6.1"]
        assert main([*args, "--out", str(rig_path)]) == 0
        frames = [f"{name}={folder / 'imgs' / f'{name.capitalize()}.png'}" for name in ("front", "left", "back", "right")]
        out = tmp_path / "bev" / "parking.png"
        assert main(["project", "--rig", str(rig_path), "--out", str(out), *frames]) == 0
        image = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
        assert image.shape == (200, 200, 3)
        meta = json.loads(out.with_suffix(".json").read_text())
        assert meta["rows"] == meta["cols"] == 200 and meta["cell_size_m"] == pytest.approx(0.1)
        assert set(meta["camera_share"]) == {"front", "left", "back", "right"}
        assert all(share > 0.05 for share in meta["camera_share"].values())
        # Cells the cameras see hold the images' content, not black.
        assert (image.reshape(-1, 3).max(axis=1) > 0).mean() > 0.8
