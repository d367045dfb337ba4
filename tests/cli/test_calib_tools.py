"""``bev calib intrinsics | homography | pose | check`` through the real entry point: files, exit codes, messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from bev_service.cli.main import main
from tests.calib.test_correspondences import RIG, distorted_points, ground_patch
from tests.conftest import DEFAULT_RIG, real_folder

# calibrationdata/ost.yaml of the fisheye-checkerboard-800x503 recording (ROS camera_calibration).
PUBLISHED = {"fx": 290.050152, "fy": 289.392837, "cx": 399.938345, "cy": 273.885669}


def test_intrinsics_reproduce_the_published_fisheye_calibration(real_data: Path, tmp_path: Path) -> None:
    images = sorted(str(p) for p in (real_folder(real_data, "fisheye-checkerboard-800x503") / "calibrationdata").glob("*.png"))
    assert len(images) == 24
    out = tmp_path / "cam.json"
    # The square size is unknown; it scales the board poses only, never the intrinsics.
    assert (
        main(["calib", "intrinsics", "--model", "fisheye", "--board", "8x6", "--square-m", "0.03", "--out", str(out), *images])
        == 0
    )
    cam = json.loads(out.read_text())
    k = np.array(cam["K"])
    assert k[0, 0] == pytest.approx(PUBLISHED["fx"], rel=0.01)
    assert k[1, 1] == pytest.approx(PUBLISHED["fy"], rel=0.01)
    assert k[0, 2] == pytest.approx(PUBLISHED["cx"], abs=3.0)
    assert k[1, 2] == pytest.approx(PUBLISHED["cy"], abs=3.0)
    assert cam["rms_px"] < 1.0
    assert cam["image_size_hw"] == [503, 800] and cam["model"] == "fisheye" and len(cam["D"]) == 4
    assert len(cam["views_used"]) + len(cam["views_dropped"]) == 24
    assert all(v["reason"] for v in cam["views_dropped"])
    assert cam["board"]["inner_corners_cols_rows"] == [8, 6]


def test_intrinsics_without_any_board_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = []
    for i in range(3):
        path = tmp_path / f"blank{i}.png"
        cv2.imwrite(str(path), np.full((120, 160), 128, dtype=np.uint8))
        images.append(str(path))
    code = main(
        [
            "calib",
            "intrinsics",
            "--model",
            "pinhole",
            "--board",
            "8x6",
            "--square-m",
            "0.03",
            "--out",
            str(tmp_path / "c.json"),
            *images,
        ]
    )
    assert code == 2
    assert "need at least 3 usable board views, have 0" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_intrinsics_bad_board_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "calib",
            "intrinsics",
            "--model",
            "fisheye",
            "--board",
            "8by6",
            "--square-m",
            "0.03",
            "--out",
            str(tmp_path / "c.json"),
            "x.png",
        ]
    )
    assert code == 2
    assert "COLSxROWS" in capsys.readouterr().err


def write_points(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "points.json"
    path.write_text(json.dumps(data))
    return path


def test_homography_writes_h_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    camera = RIG.camera("front")
    points = write_points(tmp_path, distorted_points(camera, ground_patch(camera, 1.0, 4.0, 2.0), noise_px=0.2))
    out = tmp_path / "H.json"
    assert main(["calib", "homography", "--points", str(points), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert np.array(result["ground_from_image"]).shape == (3, 3)
    assert result["undistorted_k"] == camera.model.intrinsics.matrix.tolist()  # type: ignore[attr-defined]
    assert 0 < result["rms_cm"] <= result["max_cm"] < 5
    assert len(result["points"]) == 16 and all("error_cm" in p for p in result["points"])
    assert set(result["rig_camera"]) == {"name", "image_size_hw", "model", "ground_homography"}
    assert "rms" in capsys.readouterr().out


def test_homography_with_collinear_points_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    points = write_points(
        tmp_path, {"points": [{"image_px": [100 + 10 * i, 200 + i * i], "ground_m": [1 + i, 0]} for i in range(5)]}
    )
    assert main(["calib", "homography", "--points", str(points), "--out", str(tmp_path / "H.json")]) == 2
    assert "one line" in capsys.readouterr().err


def test_homography_help_documents_the_points_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["calib", "homography", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(key in text for key in ('"image_px"', '"ground_m"', '"intrinsics"', "x forward, y left", "--ransac-cm"))


def test_pose_writes_pose_json(tmp_path: Path) -> None:
    camera = RIG.camera("rear")
    points = write_points(tmp_path, distorted_points(camera, ground_patch(camera, 1.0, 4.0, 2.0)))
    out = tmp_path / "pose.json"
    assert main(["calib", "pose", "--points", str(points), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    np.testing.assert_allclose(result["vehicle_from_camera"], camera.vehicle_from_camera, atol=1e-8)
    assert result["rms_px"] < 1e-6 and result["height_m"] == pytest.approx(0.9)


def test_check_writes_picture_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "coverage.png"
    assert main(["calib", "check", "--rig", str(DEFAULT_RIG), "--out", str(out)]) == 0
    picture = cv2.imread(str(out))
    figures = json.loads(out.with_suffix(".json").read_text())
    scale = figures["picture"]["scale_px_per_cell"]
    assert figures["picture"]["grid_box_xywh_px"] == [0, 0, 400 * scale, 400 * scale]
    assert picture.shape[0] >= 400 * scale and picture.shape[1] > 400 * scale
    shares = sum(c["owner_share"] for c in figures["cameras"]) + figures["unknown_share"] + figures["ego_share"]
    assert shares == pytest.approx(1.0, abs=1e-9)
    assert [c["name"] for c in figures["cameras"]] == ["front", "left", "rear", "right"]
    assert figures["table_build_ms"] > 0
    printed = capsys.readouterr().out
    assert "owner share: front" in printed and "tables built in" in printed


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda d: d["cameras"][1]["model"].pop("fx"), "camera 'left', field 'model.fx'"),
        (lambda d: d["grid"].update(cell_size_m=0), "field 'grid"),
        (
            lambda d: d["cameras"][3].update(
                vehicle_from_camera={"quaternion_wxyz": [0, 0, 0, 1], "translation_m": [0.95, -0.98, 50.0]}
            ),
            "camera 'right'",
        ),
    ],
)
def test_check_broken_rig_exits_2_naming_camera_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], break_it: Any, expected: str
) -> None:
    data = yaml.safe_load(Path(DEFAULT_RIG).read_text())
    break_it(data)
    rig = tmp_path / "broken.yaml"
    rig.write_text(yaml.safe_dump(data))
    assert main(["calib", "check", "--rig", str(rig), "--out", str(tmp_path / "c.png")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
