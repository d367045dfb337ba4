"""Rig importers: golden points worked out by hand, ground axes and units, round trips through the rig
file, malformed inputs, and ``bev calib import`` / ``bev project`` through the real entry point.

Synthetic inputs are written to tmp_path in each source's own format; the real files are read from
../shared/data/real through the ``real_data`` fixture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from bev_service.calib.import_surround_view import read_camera_yaml
from bev_service.calib.importers import (
    import_kdt_json,
    import_ocam_json,
    import_surround_view_yaml,
    write_imported,
)
from bev_service.calib.rigfile import load_rig
from bev_service.cli.main import main
from bev_service.errors import CalibrationError
from bev_service.geometry.rig import Rig
from bev_service.geometry.transforms import apply_homography, invert_rigid, rigid, vehicle_from_camera_mount
from tests.conftest import real_folder

# --- surround-view-yaml -------------------------------------------------------------------------

SV_NAMES = ("front", "back", "left", "right")


def write_surround_yaml(folder: Path, name: str, **overrides: Any) -> None:
    """One camera's OpenCV FileStorage YAML as the source writes it; an override of None leaves the key out."""
    nodes: dict[str, Any] = {
        "camera_matrix": np.array([[300.0, 0, 480], [0, 300, 320], [0, 0, 1]]),
        "dist_coeffs": np.zeros((4, 1)),
        "resolution": np.array([[960], [640]], dtype=np.int32),
        "project_matrix": np.eye(3),
        "scale_xy": np.array([[1.0], [1.0]], dtype=np.float32),
        "shift_xy": np.array([[0.0], [0.0]], dtype=np.float32),
    }
    nodes.update(overrides)
    storage = cv2.FileStorage(str(folder / f"{name}.yaml"), cv2.FILE_STORAGE_WRITE)
    for key, value in nodes.items():
        if value is not None:
            storage.write(key, np.asarray(value))
    storage.release()


@pytest.fixture
def synthetic_surround(tmp_path: Path) -> Path:
    """project_matrix = identity: the undistorted image is the strip itself, so the canvas geometry
    alone decides where each pixel lands."""
    folder = tmp_path / "sv" / "yaml"
    folder.mkdir(parents=True)
    for name in SV_NAMES:
        write_surround_yaml(folder, name)
    return folder.parent


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


@pytest.mark.parametrize(("name", "strip_px", "expected_xy"), STRIP_GOLDEN)
def test_surround_view_strip_pixels_land_where_worked_out(
    synthetic_surround: Path, name: str, strip_px: tuple[float, float], expected_xy: tuple[float, float]
) -> None:
    rig = import_surround_view_yaml(synthetic_surround).rig
    np.testing.assert_allclose(ground_of(rig, name, strip_px), expected_xy, atol=1e-9)


def test_surround_view_grid_and_ego_are_the_source_canvas(synthetic_surround: Path) -> None:
    rig = import_surround_view_yaml(synthetic_surround).rig
    assert rig.grid.x_range_m == (-8.0, 8.0) and rig.grid.y_range_m == (-6.0, 6.0)
    assert rig.grid.cell_size_m == 0.01 and rig.grid.shape == (1600, 1200)
    assert rig.ego.x_range_m == (-2.5, 2.5) and rig.ego.y_range_m == (-1.0, 1.0)
    assert rig.camera_names == SV_NAMES
    # Canvas pixel (u, v) is grid cell (row v, col u): the cell centre of (row 10, col 20) is pixel (20, 10).
    np.testing.assert_allclose(ground_of(rig, "front", (20, 10)), rig.grid.vehicle_xy_from_cell(10, 20), atol=1e-12)


def test_surround_view_mat_corners_on_real_calibration(real_data: Path) -> None:
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


def test_surround_view_undistorted_k_is_scaled_and_shifted(real_data: Path) -> None:
    rig = import_surround_view_yaml(real_folder(real_data, "surround-view-4fisheye")).rig
    front = rig.camera("front")
    hom = front.ground_homography
    assert hom is not None
    k = front.model.intrinsics  # type: ignore[attr-defined]
    # front.yaml: scale_xy (0.7, 0.8), shift_xy (-150, -100)
    np.testing.assert_allclose(
        hom.undistorted_k, [[k.fx * 0.7, 0, k.cx - 150], [0, k.fy * 0.8, k.cy - 100], [0, 0, 1]], rtol=1e-6
    )


def test_surround_view_round_trip(synthetic_surround: Path, tmp_path: Path) -> None:
    imported = import_surround_view_yaml(synthetic_surround, rig_id="sv-test")
    loaded = write_imported(imported, tmp_path / "out" / "rig.yaml")
    assert loaded.fingerprint == imported.rig.fingerprint
    assert loaded.rig_id == "sv-test"
    assert "surround-view-yaml" in (tmp_path / "out" / "rig.yaml").read_text()


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
def test_surround_view_malformed_input_names_camera_and_field(
    synthetic_surround: Path, overrides: dict[str, Any], camera: str, field: str
) -> None:
    write_surround_yaml(synthetic_surround / "yaml", "left", **overrides)
    with pytest.raises(CalibrationError) as info:
        import_surround_view_yaml(synthetic_surround)
    assert (info.value.camera, info.value.field) == (camera, field)
    assert camera in str(info.value) and field in str(info.value)


def test_surround_view_missing_or_broken_file(synthetic_surround: Path) -> None:
    (synthetic_surround / "yaml" / "right.yaml").unlink()
    with pytest.raises(CalibrationError) as info:
        import_surround_view_yaml(synthetic_surround)
    assert (info.value.camera, info.value.field) == ("right", "file")
    (synthetic_surround / "yaml" / "right.yaml").write_text("%YAML:1.0\n---\ncamera_matrix: [1, 2\n")
    with pytest.raises(CalibrationError) as info:
        import_surround_view_yaml(synthetic_surround)
    assert (info.value.camera, info.value.field) == ("right", "file")


# --- kdt-json -------------------------------------------------------------------------------------

# Where the synthetic rig's cameras are (vehicle frame, metres): a car with mirror cameras.
KDT_POSES = {
    "front": vehicle_from_camera_mount((2.0, 0.0, 0.8), yaw_deg=0, pitch_down_deg=30),
    "left": vehicle_from_camera_mount((0.9, 1.0, 1.0), yaw_deg=90, pitch_down_deg=45),
    "back": vehicle_from_camera_mount((-2.2, 0.1, 0.9), yaw_deg=180, pitch_down_deg=35),
    "right": vehicle_from_camera_mount((0.9, -1.0, 1.0), yaw_deg=-90, pitch_down_deg=45),
}
AXIS_VECTORS = {
    "forward": (1, 0, 0),
    "back": (-1, 0, 0),
    "left": (0, 1, 0),
    "right": (0, -1, 0),
    "up": (0, 0, 1),
    "down": (0, 0, -1),
}


def kdt_document(ground_axes: dict[str, str], units_m: float | None, file_units_per_m: float) -> dict[str, Any]:
    """A kdt-json file describing KDT_POSES in a ground frame with ``ground_axes``, lengths in file units."""
    vehicle_from_ground = rigid(np.array([AXIS_VECTORS[ground_axes[a]] for a in "xyz"], dtype=float).T, np.zeros(3))
    cameras = {}
    for name, pose in KDT_POSES.items():
        ground_from_camera = invert_rigid(vehicle_from_ground) @ pose
        ground_from_camera[:3, 3] *= file_units_per_m
        cameras[name] = {
            "K": [[300.0, 0, 640], [0, 300, 400], [0, 0, 1]],
            "D": [0.01, -0.002, 0.0, 0.0],
            "T_camera_from_ground": invert_rigid(ground_from_camera).tolist(),
        }
    half = 10.0 * file_units_per_m
    return {
        "format": "kdt-json",
        "units_m": units_m,
        "ground_axes": ground_axes,
        "grid": {"x_range": [-half, half], "y_range": [-half, half], "cell_size": 0.1 * file_units_per_m},
        "image_size_wh": [1280, 800],
        "cameras": cameras,
    }


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "ground_axes",
    [
        {"x": "right", "y": "forward", "z": "up"},
        {"x": "forward", "y": "left", "z": "up"},
        {"x": "back", "y": "right", "z": "up"},
        {"x": "left", "y": "down", "z": "back"},
    ],
)
def test_kdt_json_any_ground_axes_give_the_same_vehicle_geometry(tmp_path: Path, ground_axes: dict[str, str]) -> None:
    path = write_json(tmp_path / "calib.json", kdt_document(ground_axes, units_m=1.0, file_units_per_m=1.0))
    rig = import_kdt_json(path).rig
    for name, pose in KDT_POSES.items():
        np.testing.assert_allclose(rig.camera(name).vehicle_from_camera, pose, atol=1e-12)
    assert rig.grid.shape == (200, 200) and rig.grid.x_range_m == (-10.0, 10.0)


def test_kdt_json_units_from_file_and_override(tmp_path: Path) -> None:
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


def test_kdt_json_unknown_units_are_said_in_the_description(tmp_path: Path) -> None:
    path = write_json(tmp_path / "u.json", kdt_document({"x": "right", "y": "forward", "z": "up"}, None, 10.0))
    imported = import_kdt_json(path)
    np.testing.assert_allclose(imported.rig.camera("front").vehicle_from_camera[:3, 3], 10 * KDT_POSES["front"][:3, 3], atol=1e-9)
    assert "the file's own units" in imported.description


def test_kdt_json_ego_box_is_the_camera_footprint(tmp_path: Path) -> None:
    path = write_json(tmp_path / "c.json", kdt_document({"x": "right", "y": "forward", "z": "up"}, 1.0, 1.0))
    imported = import_kdt_json(path)
    assert imported.rig.ego.x_range_m == pytest.approx((-2.2, 2.0))
    assert imported.rig.ego.y_range_m == pytest.approx((-1.0, 1.0))
    assert "bounding box of the camera positions" in imported.description


def test_kdt_json_real_calibration(real_data: Path, tmp_path: Path) -> None:
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


def _kdt_broken(tmp_path: Path, edit: Any) -> Path:
    data = kdt_document({"x": "right", "y": "forward", "z": "up"}, 1.0, 1.0)
    edit(data)
    return write_json(tmp_path / "broken.json", data)


@pytest.mark.parametrize(
    ("edit", "camera", "field"),
    [
        (lambda d: d["cameras"]["left"].pop("K"), "left", "K"),
        (lambda d: d["cameras"]["left"].update(D=[0.1, 0.2]), "left", "D"),
        (lambda d: d["cameras"]["back"].update(T_camera_from_ground=np.eye(4)[:3].tolist()), "back", "T_camera_from_ground"),
        (lambda d: d["cameras"]["back"].update(T_camera_from_ground=(2 * np.eye(4)).tolist()), "back", "T_camera_from_ground"),
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
def test_kdt_json_malformed_input_names_camera_and_field(tmp_path: Path, edit: Any, camera: str | None, field: str) -> None:
    with pytest.raises(CalibrationError) as info:
        import_kdt_json(_kdt_broken(tmp_path, edit))
    assert (info.value.camera, info.value.field) == (camera, field)


def test_kdt_json_not_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        import_kdt_json(path)


# --- ocam-json ------------------------------------------------------------------------------------

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


def test_ocam_json_recovers_the_poses(synthetic_ocam: Path) -> None:
    imported = import_ocam_json(synthetic_ocam)
    rig = imported.rig
    assert rig.camera_names == ("front", "left", "back", "right")
    for name, pose in KDT_POSES.items():
        np.testing.assert_allclose(rig.camera(name).vehicle_from_camera, pose, atol=1e-9)
    assert rig.grid.shape == (1000, 1000) and rig.grid.cell_size_m == 0.025 and rig.grid.x_range_m == (-12.5, 12.5)
    model = rig.camera("left").model
    assert model.center_xy == (640.0, 480.0) and model.affine_cde == (1.0, 0.0005, 0.0002)  # type: ignore[attr-defined]
    assert "0.025 m" in imported.description and "taken as metres" in imported.description


def test_ocam_json_height_override_moves_the_camera(synthetic_ocam: Path) -> None:
    base = import_ocam_json(synthetic_ocam).rig.camera("back").vehicle_from_camera
    raised = (
        import_ocam_json(synthetic_ocam, heights_m={"back": OCAM_HEIGHTS["back"] + 0.5}).rig.camera("back").vehicle_from_camera
    )
    assert base is not None and raised is not None
    np.testing.assert_allclose(raised[:3, 3] - base[:3, 3], [0, 0, 0.5], atol=1e-12)
    np.testing.assert_allclose(raised[:3, :3], base[:3, :3], atol=1e-12)


def test_ocam_json_swapped_extrinsics_fail_the_layout_check(synthetic_ocam: Path) -> None:
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
def test_ocam_json_malformed_intrinsics_name_camera_and_field(synthetic_ocam: Path, edits: dict[str, Any], field: str) -> None:
    pose = invert_rigid(KDT_POSES["back"]) @ np.linalg.inv(virtual_from_vehicle(OCAM_HEIGHTS["back"]))
    write_ocam_camera(synthetic_ocam, "Back", pose, **edits)
    with pytest.raises(CalibrationError) as info:
        import_ocam_json(synthetic_ocam)
    assert (info.value.camera, info.value.field) == ("back", field)


def test_ocam_json_malformed_extrinsics_and_heights(synthetic_ocam: Path) -> None:
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


def test_ocam_json_real_calibration_matches_the_source_renderer(real_data: Path) -> None:
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


# --- the command line -----------------------------------------------------------------------------


def test_cli_imports_surround_view(synthetic_surround: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rigs" / "sv.yaml"
    assert main(["calib", "import", "surround-view-yaml", str(synthetic_surround), "--out", str(out), "--rig-id", "sv1"]) == 0
    assert load_rig(out).rig_id == "sv1"
    assert "wrote" in capsys.readouterr().out


def test_cli_imports_kdt_json_with_units(tmp_path: Path) -> None:
    path = write_json(tmp_path / "calib.json", kdt_document({"x": "right", "y": "forward", "z": "up"}, None, 100.0))
    out = tmp_path / "kdt.yaml"
    assert main(["calib", "import", "kdt-json", str(path), "--units-m", "0.01", "--out", str(out)]) == 0
    rig = load_rig(out)
    np.testing.assert_allclose(rig.camera("right").vehicle_from_camera, KDT_POSES["right"], atol=1e-6)
    assert rig.grid.x_range_m == pytest.approx((-10.0, 10.0))


def test_cli_reports_a_broken_calibration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _kdt_broken(tmp_path, lambda d: d["cameras"]["left"].pop("D"))
    out = tmp_path / "never.yaml"
    assert main(["calib", "import", "kdt-json", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "camera 'left'" in err and "field 'D'" in err
    assert not out.exists()
    assert main(["calib", "import", "ocam-json", str(tmp_path), "--height", "front=high", "--out", str(out)]) == 2


def test_cli_import_then_project_real_parking(real_data: Path, tmp_path: Path) -> None:
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
