"""Coverage figures and picture of a rig: shares add up, colours follow the owners, layout as documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bev_service.calib.coverage import (
    EGO_RGB,
    OVERLAP_SHADE,
    UNKNOWN_RGB,
    camera_colour,
    coverage_picture,
    coverage_text,
    coverage_to_json,
    default_scale,
    measure_coverage,
)
from bev_service.calib.rigfile import rig_from_dict
from bev_service.geometry.rig import Rig
from bev_service.geometry.tables import GroundTables
from tests.conftest import DEFAULT_RIG


def small_rig(cameras: tuple[str, ...] = ("front", "left", "rear", "right"), cell_size_m: float = 0.1) -> Rig:
    """The default rig's cameras (some of them) over a coarser grid, so the tests stay quick."""
    data: dict[str, Any] = yaml.safe_load(Path(DEFAULT_RIG).read_text())
    data["cameras"] = [c for c in data["cameras"] if c["name"] in cameras]
    data["grid"]["cell_size_m"] = cell_size_m
    return rig_from_dict(data)


@pytest.fixture(scope="module")
def two_camera() -> tuple[Rig, GroundTables, Any]:
    """Front and left only: cells owned, seen twice, unknown and ego all appear."""
    rig = small_rig(("front", "left"))
    tables, coverage = measure_coverage(rig)
    return rig, tables, coverage


def test_shares_add_up_to_one(two_camera: tuple[Rig, GroundTables, Any]) -> None:
    rig, tables, coverage = two_camera
    total = sum(coverage.owner_share.values()) + coverage.unknown_share + coverage.ego_share
    assert total == pytest.approx(1.0, abs=1e-12)
    assert coverage.unknown_share > 0.1  # no right or rear camera
    assert coverage.ego_share == pytest.approx(float(tables.ego.mean()))
    for name in coverage.camera_names:
        assert coverage.seen_share[name] >= coverage.owner_share[name] > 0
    data = coverage_to_json(rig, coverage, {"scale_px_per_cell": 1})
    total = sum(c["owner_share"] for c in data["cameras"]) + data["unknown_share"] + data["ego_share"]
    assert total == pytest.approx(1.0, abs=1e-12)
    assert data["rows"] == rig.grid.rows and data["cell_size_m"] == rig.grid.cell_size_m


def test_picture_colours_follow_the_owners(two_camera: tuple[Rig, GroundTables, Any]) -> None:
    rig, tables, coverage = two_camera
    scale = 2
    picture, layout = coverage_picture(tables, coverage, scale=scale, grid_lines=False)
    x, y, w, h = layout["grid_box_xywh_px"]
    assert (x, y, w, h) == (0, 0, rig.grid.cols * scale, rig.grid.rows * scale)
    assert picture.shape[0] >= h and picture.shape[1] > w and picture.dtype == np.uint8
    cells = picture[:h:scale, :w:scale]  # top-left pixel of every cell, (rows, cols, 3)
    seen_by = tables.seen.sum(axis=0)
    for index in range(len(tables.camera_names)):
        alone = (tables.owner == index) & (seen_by == 1)
        assert alone.sum() > 50
        np.testing.assert_array_equal(cells[alone], np.broadcast_to(camera_colour(index), (int(alone.sum()), 3)))
    unknown = (tables.owner == -1) & ~tables.ego
    np.testing.assert_array_equal(cells[unknown], np.broadcast_to(UNKNOWN_RGB, (int(unknown.sum()), 3)))
    inner_ego = tables.ego.copy()
    inner_ego[np.nonzero(tables.ego.any(axis=1))[0][[0, -1]]] = False  # the outline runs along the box's edge
    inner_ego[:, np.nonzero(tables.ego.any(axis=0))[0][[0, -1]]] = False
    ego_pixels = cells[inner_ego]
    assert (ego_pixels == EGO_RGB).all(axis=1).mean() > 0.9  # the rest is the front notch


def test_cells_seen_twice_are_hatched(two_camera: tuple[Rig, GroundTables, Any]) -> None:
    _, tables, coverage = two_camera
    picture, _ = coverage_picture(tables, coverage, scale=1, grid_lines=False)
    rows, cols = tables.grid.shape
    cells = picture[:rows, :cols].astype(np.float64)
    overlap = tables.seen.sum(axis=0) > 1
    assert overlap.sum() > 50
    owner_colours = np.array([camera_colour(i) for i in np.maximum(tables.owner, 0)[overlap]], dtype=np.float64)
    dark = np.all(np.abs(cells[overlap] - np.floor(owner_colours * OVERLAP_SHADE)) <= 1, axis=1)
    plain = np.all(cells[overlap] == owner_colours, axis=1)
    assert (dark | plain).all() and 0.2 < dark.mean() < 0.6


def test_metre_lines_cross_the_origin(two_camera: tuple[Rig, GroundTables, Any]) -> None:
    rig, tables, coverage = two_camera
    with_lines, layout = coverage_picture(tables, coverage, scale=1)
    without, _ = coverage_picture(tables, coverage, scale=1, grid_lines=False)
    assert layout["grid_line_step_m"] == 1.0  # 10 px per metre
    row_of_x0 = round(rig.grid.x_range_m[1] / rig.grid.cell_size_m)  # x = 0 m
    col_of_y0 = round(rig.grid.y_range_m[1] / rig.grid.cell_size_m)  # y = 0 m
    between = col_of_y0 + 5  # y = -0.5 m: no vertical line
    changed_rows = np.nonzero((with_lines[:, between] != without[:, between]).any(axis=1))[0]
    assert row_of_x0 in changed_rows
    assert len(changed_rows) == rig.grid.rows // 10 + 1  # one line per metre, both edges included
    changed_cols = np.nonzero((with_lines[row_of_x0 + 5] != without[row_of_x0 + 5]).any(axis=1))[0]
    assert col_of_y0 in changed_cols


def test_default_scale_makes_the_picture_at_least_400_pixels() -> None:
    assert default_scale(small_rig().grid) == 2  # 200 x 200 cells
    assert default_scale(small_rig(cell_size_m=0.05).grid) == 1


def test_text_summary_names_every_camera_and_the_build_time() -> None:
    rig = small_rig()
    _, coverage = measure_coverage(rig)
    text = coverage_text(rig, coverage)
    assert all(name in text for name in rig.camera_names)
    assert "tables built in" in text and coverage.build_ms > 0
    assert coverage.unknown_share == 0.0 and not coverage.warnings
