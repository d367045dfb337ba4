"""The rig file: every broken rig is a CalibrationError naming the camera and the field; saving and
loading keeps the tables; saving is atomic."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bev_service.calib.rigfile import load_rig, rig_from_dict, rig_from_yaml, rig_to_yaml, save_rig
from bev_service.errors import CalibrationError
from bev_service.geometry.cameras import FisheyeCamera, Intrinsics, MeiCamera, OcamCamera, PinholeCamera, RadTan
from bev_service.geometry.rig import Camera, GroundHomography, Rig
from bev_service.geometry.tables import build_ground_tables
from bev_service.geometry.transforms import invert_rigid, vehicle_from_camera_mount
from tests.conftest import DEFAULT_RIG

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def default_data() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_RIG.read_text(encoding="utf-8"))


def _camera(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in data["cameras"] if c["name"] == name)


def _homography_of(data: dict[str, Any], name: str) -> dict[str, Any]:
    """The camera's pose turned into a ground homography entry (undistorted K' = 250 px pinhole)."""
    rig = rig_from_dict(data)
    pose = rig.camera(name).vehicle_from_camera
    assert pose is not None
    camera_from_vehicle = invert_rigid(pose)
    k = np.array([[250.0, 0.0, 480.0], [0.0, 250.0, 320.0], [0.0, 0.0, 1.0]])
    h = np.linalg.inv(k @ np.column_stack([camera_from_vehicle[:3, 0], camera_from_vehicle[:3, 1], camera_from_vehicle[:3, 3]]))
    return {"ground_from_image": h.tolist(), "undistorted_k": k.tolist()}


def _sky_camera(d: dict[str, Any]) -> None:
    cam = _camera(d, "left")
    cam["model"]["max_angle_deg"] = 85.0
    pose = vehicle_from_camera_mount([0.95, 0.98, 1.05], yaw_deg=90.0, pitch_down_deg=-90.0)  # straight up
    cam["vehicle_from_camera"] = {"matrix": pose.tolist()}


def _homography_far_away(d: dict[str, Any]) -> None:
    entry = _homography_of(d, "rear")
    # The ground it sees moved 500 m back: the grid's cells would lie 500 m ahead, behind the lens.
    shift = np.array([[1.0, 0.0, -500.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    entry["ground_from_image"] = (shift @ np.array(entry["ground_from_image"])).tolist()
    cam = _camera(d, "rear")
    del cam["vehicle_from_camera"]
    cam["ground_homography"] = entry


def _singular_homography(d: dict[str, Any]) -> None:
    cam = _camera(d, "right")
    del cam["vehicle_from_camera"]
    cam["ground_homography"] = {
        "ground_from_image": [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 0.0, 1.0]],
        "undistorted_k": [[250.0, 0.0, 480.0], [0.0, 250.0, 320.0], [0.0, 0.0, 1.0]],
    }


def _pose_matrix(cam: dict[str, Any], rotation: list[list[float]]) -> None:
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = [2.3, 0.0, 0.8]
    cam["vehicle_from_camera"] = {"matrix": m.tolist()}


BROKEN: dict[str, tuple[Edit, str | None, str, str]] = {
    # case: (edit, camera named, field named, words in the message)
    "missing fx": (lambda d: _camera(d, "rear")["model"].pop("fx"), "rear", "model.fx", "Field required"),
    "non-positive fy": (lambda d: _camera(d, "left")["model"].update(fy=0.0), "left", "model.fy", "greater than 0"),
    "missing model": (lambda d: _camera(d, "right").pop("model"), "right", "model", "Field required"),
    "unknown model type": (lambda d: _camera(d, "left")["model"].update(type="kb8"), "left", "model", "'kb8'"),
    "three fisheye coefficients": (lambda d: _camera(d, "front")["model"].update(k=[0.0, 0.0, 0.0]), "front", "model.k.3", ""),
    "not a number": (lambda d: _camera(d, "front")["model"].update(cx=float("nan")), "front", "model.cx", "finite"),
    "infinite translation": (
        lambda d: _camera(d, "rear")["vehicle_from_camera"].update(translation_m=[0.0, float("inf"), 1.0]),
        "rear",
        "vehicle_from_camera.translation_m.1",
        "finite",
    ),
    "zero image size": (lambda d: _camera(d, "rear").update(image_size_hw=[0, 960]), "rear", "image_size_hw.0", "greater than 0"),
    "unknown field": (lambda d: _camera(d, "rear").update(colour="red"), "rear", "colour", "Extra inputs"),
    "pose and homography": (
        lambda d: _camera(d, "rear").update(ground_homography=_homography_of(d, "rear")),
        "rear",
        "(camera)",
        "exactly one",
    ),
    "zero cell size": (lambda d: d["grid"].update(cell_size_m=0.0), None, "grid.cell_size_m", "greater than or equal to 0.001"),
    "negative cell size": (
        lambda d: d["grid"].update(cell_size_m=-0.05),
        None,
        "grid.cell_size_m",
        "greater than or equal to 0.001",
    ),
    "cells do not tile the grid": (lambda d: d["grid"].update(cell_size_m=0.07), None, "grid", "whole number"),
    "empty ego box": (lambda d: d["ego"].update(x_range_m=[1.0, -1.0]), None, "ego", "max > min"),
    "no cameras": (lambda d: d.update(cameras=[]), None, "cameras", "at least 1"),
    "duplicate camera names": (lambda d: _camera(d, "rear").update(name="front"), "front", "name", "unique"),
    "bad camera name": (lambda d: _camera(d, "rear").update(name="../rear"), "../rear", "name", "pattern"),
    "zero quaternion": (
        lambda d: _camera(d, "left")["vehicle_from_camera"].update(quaternion_wxyz=[0, 0, 0, 0]),
        "left",
        "vehicle_from_camera.quaternion_wxyz",
        "unit quaternion",
    ),
    "quaternion not of unit norm": (
        lambda d: _camera(d, "left")["vehicle_from_camera"].update(quaternion_wxyz=[0.6, -1.9, 0.0, 0.0]),
        "left",
        "vehicle_from_camera.quaternion_wxyz",
        "norm",
    ),
    "quaternion without translation": (
        lambda d: _camera(d, "left")["vehicle_from_camera"].pop("translation_m"),
        "left",
        "vehicle_from_camera",
        "either 'matrix'",
    ),
    "scaled rotation": (
        lambda d: _pose_matrix(_camera(d, "front"), [[0, 0, 1.1], [-1, 0, 0], [0, -1, 0]]),
        "front",
        "vehicle_from_camera.matrix",
        "orthonormal",
    ),
    "reflection": (
        lambda d: _pose_matrix(_camera(d, "front"), [[0, 0, 1], [1, 0, 0], [0, -1, 0]]),
        "front",
        "vehicle_from_camera.matrix",
        "reflection",
    ),
    "camera below the ground": (
        lambda d: _camera(d, "rear")["vehicle_from_camera"].update(translation_m=[-2.3, 0.0, -0.9]),
        "rear",
        "vehicle_from_camera",
        "above the ground",
    ),
    "camera looking at the sky": (_sky_camera, "left", "vehicle_from_camera", "sees no ground"),
    "homography seeing ground outside the grid": (_homography_far_away, "rear", "ground_homography", "sees no ground"),
    "non-invertible homography": (_singular_homography, "right", "ground_homography", "not invertible"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_rig_names_camera_and_field(default_data: dict[str, Any], case: str) -> None:
    edit, camera, field, words = BROKEN[case]
    data = copy.deepcopy(default_data)
    edit(data)
    with pytest.raises(CalibrationError) as info:
        rig_from_dict(data)
    error = info.value
    assert (error.camera, error.field) == (camera, field), str(error)
    assert words in str(error)
    if camera is not None:
        assert f"camera {camera!r}" in str(error)
    assert f"field {field!r}" in str(error)


def test_the_broken_rigs_are_broken_by_their_edit_alone(default_data: dict[str, Any]) -> None:
    rig = rig_from_dict(copy.deepcopy(default_data))
    assert rig.camera_names == ("front", "left", "rear", "right")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- just\n- a list\n", "must be a YAML mapping, got list"),
        ("42\n", "must be a YAML mapping, got int"),
        ("", "must be a YAML mapping, got NoneType"),
        ("rig_id: [unclosed\n", "not valid YAML"),
    ],
)
def test_text_that_is_not_a_rig_mapping(text: str, words: str) -> None:
    with pytest.raises(CalibrationError, match=words):
        rig_from_yaml(text)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"cannot read rig file .*missing\.yaml"):
        load_rig(tmp_path / "missing.yaml")
    with pytest.raises(CalibrationError, match="cannot read rig file"):
        load_rig(tmp_path)  # a directory
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00rig")
    with pytest.raises(CalibrationError, match=r"cannot read rig file .*not UTF-8"):
        load_rig(binary)


class TestRoundTrip:
    def test_default_rig_saves_and_loads_to_the_same_tables(self, tmp_path: Path) -> None:
        rig = load_rig(DEFAULT_RIG)
        path = tmp_path / "rig.yaml"
        save_rig(rig, path, description="round trip")
        again = load_rig(path)
        assert again.fingerprint == rig.fingerprint
        assert again == rig
        a, b = build_ground_tables(rig), build_ground_tables(again)
        np.testing.assert_array_equal(a.owner, b.owner)
        np.testing.assert_array_equal(a.pixel_uv, b.pixel_uv)
        # And once more: saving what was loaded writes the same text.
        assert rig_to_yaml(again, "round trip") == path.read_text(encoding="utf-8")

    def test_every_model_and_tie_survives_a_round_trip(self) -> None:
        base = load_rig(DEFAULT_RIG)
        front, left, rear, right = base.cameras
        assert front.vehicle_from_camera is not None and rear.vehicle_from_camera is not None
        k = Intrinsics(300.0, 300.0, 479.5, 319.5)
        h = _homography_of(yaml.safe_load(DEFAULT_RIG.read_text(encoding="utf-8")), "left")
        cameras = (
            Camera("front", PinholeCamera(k, (640, 960), RadTan(-0.05, 0.01, 1e-3, -1e-3, 1e-4)), front.vehicle_from_camera),
            Camera(
                "left",
                left.model,
                ground_homography=GroundHomography(np.array(h["ground_from_image"]), np.array(h["undistorted_k"])),
            ),
            Camera("rear", MeiCamera(k, (640, 960), 0.9, RadTan(-0.1, 0.02)), rear.vehicle_from_camera),
            Camera(
                "right",
                OcamCamera((640, 960), (150.0 * np.pi / 2, 150.0), (479.5, 319.5), (1.001, 2e-4, -1e-4), 100.0),
                right.vehicle_from_camera,
            ),
        )
        rig = Rig("mixed", "7", cameras, base.grid, base.ego, "rear axle centre")
        again = rig_from_yaml(rig_to_yaml(rig))
        assert again == rig and again.fingerprint == rig.fingerprint
        assert isinstance(again.camera("front").model, PinholeCamera) and isinstance(again.camera("right").model, OcamCamera)
        assert isinstance(again.camera("left").model, FisheyeCamera) and again.camera("left").ground_homography is not None

    def test_quaternion_and_matrix_forms_give_the_same_pose(self, default_data: dict[str, Any]) -> None:
        data = copy.deepcopy(default_data)
        from_quaternion = rig_from_dict(data).camera("left").vehicle_from_camera
        assert from_quaternion is not None
        _camera(data, "left")["vehicle_from_camera"] = {"matrix": from_quaternion.tolist()}
        np.testing.assert_array_equal(rig_from_dict(data).camera("left").vehicle_from_camera, from_quaternion)


class TestAtomicSave:
    def test_replaces_the_file_in_one_step_and_leaves_no_temporary_file(self, tmp_path: Path) -> None:
        rig = load_rig(DEFAULT_RIG)
        path = tmp_path / "rig.yaml"
        path.write_text("old contents\n", encoding="utf-8")
        with path.open(encoding="utf-8") as reader:  # a reader that opened the old file keeps reading it whole
            save_rig(rig, path)
            assert reader.read() == "old contents\n"
        assert load_rig(path) == rig
        assert sorted(p.name for p in tmp_path.iterdir()) == ["rig.yaml"]

    def test_a_failed_save_leaves_the_old_file_and_no_temporary_file(self, tmp_path: Path) -> None:
        target = tmp_path / "rig.yaml"
        target.mkdir()  # replacing a directory by a file fails
        (target / "keep").write_text("x", encoding="utf-8")
        with pytest.raises(OSError):
            save_rig(load_rig(DEFAULT_RIG), target)
        assert (target / "keep").read_text(encoding="utf-8") == "x"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["rig.yaml"]

    def test_saved_file_is_readable_by_others(self, tmp_path: Path) -> None:
        # mkstemp creates files only the owner can read; a rig file is configuration, not a secret.
        path = tmp_path / "rig.yaml"
        save_rig(load_rig(DEFAULT_RIG), path)
        assert os.stat(path).st_mode & 0o044 == 0o044
