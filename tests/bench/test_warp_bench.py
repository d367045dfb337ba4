"""The warp bench (bench/warp.py) in quick mode: both methods compute the same grid, the closing JSON
line carries the figures. Timings are not asserted (the machine is shared)."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import numpy as np
import pytest

from bench import warp
from bench.common import json_line, parse_json_line, time_interleaved
from bev_service.calib.rigfile import load_rig
from bev_service.geometry.grid import BevGrid
from bev_service.geometry.transforms import apply_homography

REQUIRED_KEYS = ("bench", "warp_ms", "baseline_ms", "speedup", "warp_ms_480x320", "agreement", "table_build_s", "torch_cpu_ms")


@pytest.fixture(scope="module")
def quick_output() -> str:
    """Everything `python -m bench.warp --quick --repeat 3` prints (one run for the whole module)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert warp.main(["--quick", "--repeat", "3"]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def figures(quick_output: str) -> dict[str, Any]:
    return parse_json_line(quick_output)


def test_last_line_is_the_json_of_the_warp_bench(quick_output: str, figures: dict[str, Any]) -> None:
    assert quick_output.rstrip("\n").splitlines()[-1].startswith('{"bench": "warp"')
    for key in REQUIRED_KEYS:
        assert key in figures, f"missing {key!r}"
    for key in REQUIRED_KEYS[1:]:
        assert isinstance(figures[key], float) and math.isfinite(figures[key]) and figures[key] > 0, key
    assert figures["speedup"] == pytest.approx(figures["baseline_ms"] / figures["warp_ms"], rel=1e-2)
    assert figures["repeat"] == 3


def test_human_table_names_both_methods(quick_output: str) -> None:
    assert "ours 960x640" in quick_output
    assert "baseline 960x640" in quick_output
    assert "ours 480x320" in quick_output


def test_baseline_and_ours_agree_on_most_cells(figures: dict[str, Any]) -> None:
    # Only the cells beyond the baseline's pinhole view (its one real limit) and cells at class
    # boundaries where one pixel apart is another class may differ.
    assert figures["baseline_lost"] < 0.08
    assert figures["agreement_covered"] > 0.92
    assert figures["agreement"] > 0.85
    assert figures["agreement_covered_480x320"] > 0.88


def test_baseline_reads_the_same_camera_pixels(figures: dict[str, Any]) -> None:
    # The geometry check behind the agreement: both read the same pixel within two pixels.
    assert figures["source_px_within_2"] > 0.99
    assert figures["source_px_max"] < 4.0


def test_ours_meets_the_true_ground(figures: dict[str, Any]) -> None:
    assert figures["truth_ours"] > 0.93
    assert figures["truth_ours"] >= figures["truth_baseline"]


def test_grid_from_ground_maps_cell_centres_to_integer_pixels() -> None:
    grid = BevGrid(x_range_m=(-2.0, 3.0), y_range_m=(-1.0, 1.5), cell_size_m=0.5)
    rows, cols = np.meshgrid(np.arange(grid.rows), np.arange(grid.cols), indexing="ij")
    col_row, _ = apply_homography(warp.grid_from_ground(grid), grid.vehicle_xy_from_cell(rows, cols))
    np.testing.assert_allclose(col_row[..., 0], cols, atol=1e-9)
    np.testing.assert_allclose(col_row[..., 1], rows, atol=1e-9)


def test_rendered_labels_see_the_ground_pattern_below_each_camera() -> None:
    rig = load_rig(warp.DEFAULT_RIG)
    labels = warp.render_labels(rig, (32, 48))
    assert labels.shape == (4, 32, 48) and labels.dtype == np.uint8
    # the middle of the bottom row looks at the ground near the car, the top row (partly) above the horizon
    assert np.isin(labels[:, -1, 20:28], [*warp.TILE_CLASSES, warp.LANE_CLASS]).all()
    assert (labels[:, 0] == warp.BACKGROUND).any()


def test_time_interleaved_times_every_call_in_turn() -> None:
    order: list[str] = []
    timings = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeat=3, warmup=1)
    assert [t.name for t in timings] == ["a", "b"]
    assert all(t.n == 3 and t.min_ms >= 0 for t in timings)
    assert order == ["a", "b", *["a", "b"] * 3]


def test_json_line_is_one_line_with_rounded_floats() -> None:
    line = json_line("demo", {"x_ms": 0.123456789, "n": np.int64(3), "nested": {"y": 12345.678}})
    assert "\n" not in line
    assert parse_json_line(f"table\n{line}\n") == {"bench": "demo", "x_ms": 0.1235, "n": 3, "nested": {"y": 12346.0}}
