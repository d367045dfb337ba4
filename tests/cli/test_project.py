"""``bev project``: the command-line contract (outputs, metadata, exit code 2 with a clear message)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bev_service.cli.main import main
from bev_service.geometry.grid import EGO
from bev_service.imageio import read_image, read_labels, write_png
from tests.conftest import DEFAULT_RIG

CAMERAS = ("front", "left", "rear", "right")
SIZE_HW = (160, 240)  # a quarter of the calibrated 640x960
COLOURS = {"front": (250, 10, 10), "left": (10, 250, 10), "rear": (10, 10, 250), "right": (250, 250, 10)}


@pytest.fixture
def frames(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for i, name in enumerate(CAMERAS):
        rgb = np.zeros((*SIZE_HW, 3), dtype=np.uint8)
        rgb[:] = COLOURS[name]
        write_png(tmp_path / f"{name}.png", rgb)
        write_png(tmp_path / f"{name}_labels.png", np.full(SIZE_HW, i + 1, dtype=np.uint8))
        paths[name] = tmp_path / f"{name}.png"
    return paths


def _args(frames: dict[str, Path], suffix: str = "", names: tuple[str, ...] = CAMERAS) -> list[str]:
    return [f"{name}={frames[name].with_name(f'{name}{suffix}.png')}" for name in names]


def test_rgb_surround_view_and_metadata(tmp_path: Path, frames: dict[str, Path]) -> None:
    out = tmp_path / "out" / "bev.png"
    assert main(["project", "--rig", str(DEFAULT_RIG), "--out", str(out), *_args(frames)]) == 0
    view = read_image(out)
    assert view.shape == (400, 400, 3)
    meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["cell_size_m"] == 0.05 and meta["x_range_m"] == [-10.0, 10.0] and meta["y_range_m"] == [-10.0, 10.0]
    assert meta["rows"] == 400 and meta["cols"] == 400
    assert meta["row_col_convention"].startswith("row 0 = largest x (forward), col 0 = largest y (left)")
    assert meta["input_sizes_hw"] == {key: list(SIZE_HW) for key in CAMERAS} and meta["cameras"] == list(CAMERAS)
    share = meta["camera_share"]
    assert set(share) == set(CAMERAS) and sum(share.values()) + meta["ego_share"] + meta["unknown_share"] == pytest.approx(1.0)
    # Each camera's colour covers its share of the grid. Forward is up and left is left: 3.5 m ahead
    # of the centre (row 130) is the front camera's, 3.5 m behind (row 270) the rear's, 3 m to the
    # left (column 140) the left camera's.
    for name, colour in COLOURS.items():
        assert (view == colour).all(axis=-1).mean() == pytest.approx(share[name], abs=0.01)
    assert (view[130, 200] == COLOURS["front"]).all() and (view[270, 200] == COLOURS["rear"]).all()
    assert (view[200, 140] == COLOURS["left"]).all() and (view[200, 260] == COLOURS["right"]).all()


def test_labels_give_class_ids(tmp_path: Path, frames: dict[str, Path]) -> None:
    out = tmp_path / "labels.png"
    assert main(["project", "--rig", str(DEFAULT_RIG), "--out", str(out), "--labels", *_args(frames, "_labels")]) == 0
    grid = read_labels(out)
    assert grid.shape == (400, 400)
    meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    for i, name in enumerate(CAMERAS):
        assert (grid == i + 1).mean() == pytest.approx(meta["camera_share"][name])
    assert (grid == EGO).mean() == pytest.approx(meta["ego_share"]) and meta["ego_share"] > 0
    assert grid[200, 200] == EGO


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda args, d: args[:3], "expected 4 cameras (front, left, rear, right), got 3: missing 'right'"),
        (lambda args, d: [*args, f"roof={d['front']}"], "unknown 'roof'"),
        (lambda args, d: [*args, f"front={d['front']}"], "camera 'front' given twice"),
        (lambda args, d: [*args[:3], str(d["right"])], "expected CAM=IMAGE"),
    ],
    ids=["missing", "extra", "twice", "no-name"],
)
def test_wrong_cameras_exit_2(
    tmp_path: Path, frames: dict[str, Path], capsys: pytest.CaptureFixture[str], change, message
) -> None:
    out = tmp_path / "bev.png"
    assert main(["project", "--rig", str(DEFAULT_RIG), "--out", str(out), *change(_args(frames), frames)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_undecodable_image_exits_2(tmp_path: Path, frames: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    frames["rear"].write_bytes(frames["rear"].read_bytes()[:100])
    assert main(["project", "--rig", str(DEFAULT_RIG), "--out", str(tmp_path / "bev.png"), *_args(frames)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bev: error: ") and "rear.png: cannot decode image" in err


def test_missing_image_file_exits_2(tmp_path: Path, frames: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    frames["left"].unlink()
    assert main(["project", "--rig", str(DEFAULT_RIG), "--out", str(tmp_path / "bev.png"), *_args(frames)]) == 2
    assert "left.png" in capsys.readouterr().err


def test_wrong_aspect_ratio_exits_2(tmp_path: Path, frames: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for name in CAMERAS:
        write_png(frames[name], np.zeros((160, 200, 3), dtype=np.uint8))
    assert main(["project", "--rig", str(DEFAULT_RIG), "--out", str(tmp_path / "bev.png"), *_args(frames)]) == 2
    assert "aspect ratio" in capsys.readouterr().err


def test_cameras_of_different_sizes_are_each_read_at_their_own(tmp_path: Path, frames: dict[str, Path]) -> None:
    write_png(frames["front"], np.zeros((320, 480, 3), dtype=np.uint8))
    assert main(["project", "--rig", str(DEFAULT_RIG), "--out", str(tmp_path / "bev.png"), *_args(frames)]) == 0
    meta = json.loads((tmp_path / "bev.json").read_text())
    assert meta["input_sizes_hw"]["front"] == [320, 480] and meta["input_sizes_hw"]["rear"] == list(SIZE_HW)


def test_broken_rig_exits_2(tmp_path: Path, frames: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(DEFAULT_RIG.read_text(encoding="utf-8").replace("cell_size_m: 0.05", "cell_size_m: -0.05"), encoding="utf-8")
    assert main(["project", "--rig", str(rig), "--out", str(tmp_path / "bev.png"), *_args(frames)]) == 2
    assert "field 'grid.cell_size_m'" in capsys.readouterr().err
