"""``bev synth``: the documented layout and manifest, byte-identical output for one seed, drives,
the contact sheet, and exit code 2 with a clear message on bad arguments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bev_service.calib.rigfile import load_rig
from bev_service.classes import CLASSES, class_table
from bev_service.cli.main import main
from bev_service.imageio import read_image, read_labels
from bev_service.synth import read_frame_set, read_manifest
from tests.conftest import DEFAULT_RIG

CAMERAS = ("front", "left", "rear", "right")
SMALL = ["--scale", "0.25", "--no-progress"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    assert main(["synth", "--count", "2", "--seed", "5", "--out", str(out), *SMALL]) == 0
    return out


def test_writes_the_documented_layout(dataset: Path) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == ["000000", "000001", "bev_unknown.png", "manifest.json"]
    for folder in ("000000", "000001"):
        names = sorted(p.name for p in (dataset / folder).iterdir())
        assert names == sorted(
            [f"{c}{end}" for c in CAMERAS for end in (".jpg", "_labels.png", "_body.png")] + ["bev_oracle.png", "bev_truth.png"]
        )
        for cam in CAMERAS:
            assert read_image(dataset / folder / f"{cam}.jpg").shape == (160, 240, 3)
            labels = read_labels(dataset / folder / f"{cam}_labels.png")
            assert labels.shape == (160, 240) and set(np.unique(labels).tolist()) <= {c.id for c in CLASSES}
            body = read_labels(dataset / folder / f"{cam}_body.png")
            assert body.shape == (160, 240) and set(np.unique(body).tolist()) <= {0, 255}
            assert (labels[body > 0] == 0).all(), "the body is labelled background"
        truth = read_labels(dataset / folder / "bev_truth.png")
        oracle = read_labels(dataset / folder / "bev_oracle.png")
        assert truth.shape == oracle.shape == (400, 400)
        assert 254 in truth and 255 not in truth and 254 in oracle
    unknown = read_labels(dataset / "bev_unknown.png")
    assert unknown.shape == (400, 400) and set(np.unique(unknown).tolist()) <= {0, 255}


def test_manifest_names_rig_classes_seed_and_frame_sets(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    rig = load_rig(DEFAULT_RIG)
    assert manifest["rig"] == {
        "id": rig.rig_id,
        "version": rig.version,
        "path": "bev_service/shipped/default_rig.yaml",
        "fingerprint": rig.fingerprint,
    }
    assert manifest["classes"] == class_table()
    assert manifest["seed"] == 5 and manifest["kind"] == "frame_sets" and manifest["cameras"] == list(CAMERAS)
    assert manifest["image_size_hw"] == [160, 240] and manifest["grid"]["cell_size_m"] == 0.05
    entries = manifest["frame_sets"]
    assert [e["name"] for e in entries] == ["000000", "000001"]
    assert set(entries[0]["vehicle_pose"]) == {"x_m", "y_m", "yaw_deg"}
    files = {"image": "front.jpg", "labels": "front_labels.png", "body": "front_body.png"}
    assert entries[0]["files"]["cameras"]["front"] == files
    stored = read_frame_set(dataset, read_manifest(dataset)["frame_sets"][1])
    assert stored.labels["rear"].shape == (160, 240) and stored.bev_truth.shape == (400, 400)
    assert stored.body is not None and stored.body["left"].any(), "the side camera sees the sill"


def test_folders_without_body_masks_still_read(dataset: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(dataset, old)
    manifest = json.loads((old / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["frame_sets"]:
        for cam in entry["files"]["cameras"].values():
            (old / entry["name"] / cam.pop("body")).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    stored = read_frame_set(old, read_manifest(old)["frame_sets"][0])
    assert stored.body is None and stored.labels["front"].shape == (160, 240)


def test_same_seed_gives_byte_identical_files_and_other_seeds_differ(dataset: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    assert main(["synth", "--count", "2", "--seed", "5", "--out", str(again), *SMALL]) == 0
    assert main(["synth", "--count", "2", "--seed", "6", "--out", str(other), *SMALL]) == 0
    first, second, third = _files(dataset), _files(again), _files(other)
    assert first.keys() == second.keys() and all(first[k] == second[k] for k in first)
    differing = [k for k in first if k.endswith((".jpg", "_labels.png", "bev_truth.png")) and first[k] != third[k]]
    assert len(differing) == 2 * (2 * 4 + 1), "every image, label map and true BEV changes with the seed"


def test_drive_writes_frames_in_order_with_timestamps_and_poses(tmp_path: Path) -> None:
    out = tmp_path / "drive"
    args = ["synth", "--drive", "--frames", "3", "--speed-mps", "5", "--fps", "10", "--seed", "1", "--out", str(out), *SMALL]
    assert main(args) == 0
    manifest = read_manifest(out)
    assert manifest["kind"] == "drive" and manifest["drive"]["speed_mps"] == 5.0 and manifest["drive"]["fps"] == 10.0
    entries = manifest["frame_sets"]
    assert [e["name"] for e in entries] == ["000000", "000001", "000002"]
    assert [e["timestamp_s"] for e in entries] == [0.0, 0.1, 0.2]
    xy = np.array([[e["vehicle_pose"]["x_m"], e["vehicle_pose"]["y_m"]] for e in entries])
    assert np.linalg.norm(np.diff(xy, axis=0), axis=1) == pytest.approx([0.5, 0.5], rel=1e-3)
    assert (out / "000002" / "front.jpg").is_file()


def test_contact_sheet(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    assert main(["synth", "--count", "2", "--seed", "5", "--contact-sheet", str(sheet), *SMALL]) == 0
    picture = read_image(sheet)
    # two bands of (header + camera images + label maps), then the legend; four 240 px tiles + two BEVs
    assert picture.shape == (2 * (26 + 320) + 30, 4 * 240 + 2 * 320 + 8, 3)
    assert picture.std() > 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["synth", "--count", "2"], "nothing to write"),
        (["synth", "--out", "{tmp}/x"], "--count N is required"),
        (["synth", "--count", "0", "--out", "{tmp}/x"], "--count must be between"),
        (["synth", "--drive", "--count", "3", "--out", "{tmp}/x"], "--count does not apply to --drive"),
        (["synth", "--frames", "3", "--count", "1", "--out", "{tmp}/x"], "--frames only apply with --drive"),
        (["synth", "--drive", "--frames", "0", "--out", "{tmp}/x"], "at least one frame"),
        (["synth", "--drive", "--fps", "-1", "--out", "{tmp}/x"], "fps must be positive"),
        (["synth", "--count", "1", "--seed", "-3", "--out", "{tmp}/x"], "--seed must be >= 0"),
        (["synth", "--count", "1", "--scale", "5", "--out", "{tmp}/x"], "--scale must be between"),
        (["synth", "--count", "1", "--out", "{tmp}/full"], "is not empty"),
        (["synth", "--count", "1", "--rig", "{tmp}/missing.yaml", "--out", "{tmp}/x"], "missing.yaml"),
        (["synth", "--count", "1", "--contact-sheet", "{tmp}/sheet.jpg"], "must name a .png"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("someone else's file", encoding="utf-8")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "nothing is written on bad arguments"
    assert (tmp_path / "full" / "keep.txt").read_text(encoding="utf-8") == "someone else's file"
