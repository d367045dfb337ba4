"""Benchmark: label warp of the default rig's four fisheye cameras into the 400 x 400 BEV grid.

Ours: ``BevProjector(rig).warp_labels(labels)``, one gather for all cameras through precomputed
tables (NumPy, and the torch-CPU path of the same call). Baseline, on the same inputs in the same run:
the per-camera pipeline of existing surround-view code (e.g. the source of
``../shared/data/real/surround-view-4fisheye``): per camera ``cv2.remap`` through a fisheye
undistortion map computed once, ``cv2.warpPerspective`` of the undistorted labels onto that camera's
strip of the grid through the ground homography, then a merge of the strips by fixed ownership masks.
Both use nearest neighbour (labels are never interpolated) and the same owner per cell, so they must
agree on almost every cell; the run checks and prints that.

The label maps are ray-cast from a procedural flat ground (2 m tiles of random classes crossed by
lane markings) through the rig's own fisheye models, so both methods have a true answer to meet.

Run from the repository root: ``.venv/bin/python -m bench.warp [--repeat N] [--quick] [--rig PATH]``. It prints
the ratio against the baseline measured in the same run (``speedup`` = baseline median / ours, interleaved
call by call), and its last line is one JSON object:
``{"bench": "warp", "warp_ms": ..., "baseline_ms": ..., "speedup": ..., ...}``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from bench.common import Timing, bench_parser, format_table, json_line, machine, time_call, time_interleaved, time_once_s
from bev_service.calib.rigfile import load_rig
from bev_service.geometry.cameras import FisheyeCamera, FloatArray
from bev_service.geometry.grid import EGO, UNKNOWN, BevGrid
from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Camera, Rig
from bev_service.geometry.tables import NO_CAMERA, GroundTables
from bev_service.geometry.transforms import apply_rigid
from bev_service.shipped import DEFAULT_RIG

NETWORK_SIZE_HW = (320, 480)
BACKGROUND = 0
# Pinhole undistortion stretches the image as tan(angle off the optical axis); existing code crops
# the undistorted view well before 90 degrees. Cells a camera owns beyond this angle are lost to the
# baseline (counted as `baseline_lost`), the one-gather tables keep them.
PINHOLE_MAX_ANGLE_DEG = 80.0
TILE_M = 2.0
# Class boundaries sit a quarter cell off the 5 cm cell centres, so that the truth at a cell centre is never a tie.
PATTERN_OFFSET_M = 0.3625
TILE_CLASSES = np.array([1, 3, 4, 5, 6, 7], dtype=np.uint8)  # road, curb, terrain, vehicle, pedestrian, obstacle
LANE_CLASS = 2
LANE_PERIOD_M = 3.5
LANE_HALF_WIDTH_M = 0.075
MAX_GROUND_RANGE_M = 1000.0  # rays meeting the ground farther away (near the horizon) count as background


# --- inputs: label maps ray-cast from a known ground ---------------------------------------------


def ground_pattern(ground_xy: FloatArray) -> NDArray[np.uint8]:
    """Class ids of the procedural ground at vehicle-frame points (..., 2): 2 m tiles of
    pseudo-random classes, crossed by 15 cm lane markings every 3.5 m of y."""
    xy = ground_xy - PATTERN_OFFSET_M
    tile = np.floor(xy / TILE_M).astype(np.int64)
    mixed = (tile[..., 0] * 73856093) ^ (tile[..., 1] * 19349663)  # spatial hash (Teschner et al., 2003)
    classes = TILE_CLASSES[mixed % TILE_CLASSES.size]
    lane = np.abs(np.mod(xy[..., 1], LANE_PERIOD_M) - LANE_PERIOD_M / 2) < LANE_HALF_WIDTH_M
    return np.where(lane, np.uint8(LANE_CLASS), classes)


def render_camera_labels(camera: Camera, size_hw: tuple[int, int]) -> NDArray[np.uint8]:
    """(h, w) labels the camera sees of the procedural ground at input size ``size_hw``: every pixel
    centre lifted to its ray, cut with the ground plane z = 0; rays that miss it are background."""
    if camera.vehicle_from_camera is None:
        raise ValueError(f"camera {camera.name!r}: the bench renders posed cameras only")
    h, w = size_hw
    cal_h, cal_w = camera.image_size_hw
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    uv = np.stack([(u + 0.5) * cal_w / w - 0.5, (v + 0.5) * cal_h / h - 0.5], axis=-1)  # calibrated pixels
    rays_cam, valid = camera.model.unproject(uv)
    rays = np.nan_to_num(rays_cam) @ camera.vehicle_from_camera[:3, :3].T  # (h, w, 3) vehicle frame
    origin = camera.vehicle_from_camera[:3, 3]
    down = valid & (rays[..., 2] < -1e-9)
    dist = np.where(down, -origin[2] / np.where(down, rays[..., 2], -1.0), 0.0)
    ground_xy = origin[:2] + dist[..., None] * rays[..., :2]
    hit = down & (dist < MAX_GROUND_RANGE_M)
    return np.where(hit, ground_pattern(ground_xy), np.uint8(BACKGROUND))


def render_labels(rig: Rig, size_hw: tuple[int, int]) -> NDArray[np.uint8]:
    """(N, h, w) uint8 label batch of all cameras, in the rig's camera order."""
    return np.stack([render_camera_labels(cam, size_hw) for cam in rig.cameras])


def truth_grid(tables: GroundTables) -> NDArray[np.uint8]:
    """The exact answer: the ground class at every cell centre the rig sees, ego and unknown elsewhere."""
    truth = ground_pattern(tables.grid.cell_centres())
    return np.where(tables.owner == NO_CAMERA, tables.fixed_values(), truth)


# --- baseline: per camera, fisheye undistortion (cv2.remap), warpPerspective onto the ground, merge ---


def grid_from_ground(grid: BevGrid) -> FloatArray:
    """3x3 affine from vehicle ground (x, y) to grid pixel (col, row), cell centres at integers:
    row 0 = largest x, col 0 = largest y."""
    s = grid.cell_size_m
    return np.array([[0.0, -1.0 / s, grid.y_range_m[1] / s - 0.5], [-1.0 / s, 0.0, grid.x_range_m[1] / s - 0.5], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class CameraStrip:
    """What the baseline precomputes for one camera: its undistortion map, the homography from the
    undistorted view onto its strip of the grid, where that strip lies and the cells it writes there."""

    map_xy: NDArray[np.int16]  # (H', W', 2) nearest-neighbour fixed-point map for cv2.remap
    strip_from_undistorted: FloatArray
    rows: slice
    cols: slice
    mask: NDArray[np.bool_]


def baseline_warp(strips: Sequence[CameraStrip], images: NDArray[Any], fill: NDArray[Any], border: int) -> NDArray[Any]:
    """The baseline: each camera's image (uint8 labels, uint16 pixel coordinates) undistorted, warped
    onto its strip of the grid, and its cells copied into ``fill``."""
    out = fill.copy()
    for strip, image in zip(strips, images, strict=True):
        # a two-channel fixed-point map needs no second map; OpenCV's stubs insist on one
        undistorted = cv2.remap(
            image,
            strip.map_xy,
            None,
            cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=border,
        )  # type: ignore[call-overload]
        size_wh = (strip.mask.shape[1], strip.mask.shape[0])
        warped = cv2.warpPerspective(
            undistorted,
            strip.strip_from_undistorted,
            size_wh,
            flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=border,
        )
        np.copyto(out[strip.rows, strip.cols], warped, where=strip.mask)
    return out


def camera_strip(camera: Camera, owned: NDArray[np.bool_], grid: BevGrid, size_hw: tuple[int, int], crop: bool) -> CameraStrip:
    """The baseline's tables for one camera at input size ``size_hw``, set up as surround-view code does.

    The undistorted view is a pinhole K' framing the ground the camera owns within
    ``PINHOLE_MAX_ANGLE_DEG`` of its axis on about as many pixels as the input (never finer than the
    input at its centre). With ``crop`` the strip is the bounding box of the cells the camera writes,
    else the whole grid.
    """
    model = camera.model
    if not isinstance(model, FisheyeCamera):
        raise ValueError(f"camera {camera.name!r}: the baseline needs a fisheye camera, got {type(model).__name__}")
    k, (h, w), (cal_h, cal_w) = model.intrinsics.matrix, size_hw, camera.image_size_hw
    input_k = np.array(
        [
            [k[0, 0] * w / cal_w, 0.0, (k[0, 2] + 0.5) * w / cal_w - 0.5],
            [0.0, k[1, 1] * h / cal_h, (k[1, 2] + 0.5) * h / cal_h - 0.5],
            [0, 0, 1],
        ]
    )  # K at the input size, pixel centres at integers
    centres = grid.cell_centres()
    points = apply_rigid(camera.camera_from_vehicle, np.concatenate([centres, np.zeros_like(centres[..., :1])], axis=-1))
    angle = np.degrees(np.arctan2(np.hypot(points[..., 0], points[..., 1]), points[..., 2]))
    roi = points[owned & (angle < PINHOLE_MAX_ANGLE_DEG)]
    normalised = roi[:, :2] / roi[:, 2:]
    lo, hi = normalised.min(axis=0), normalised.max(axis=0)
    focal = min(math.sqrt(h * w / float(np.prod(hi - lo))), float(input_k[0, 0]))
    size_wh = (math.ceil((hi[0] - lo[0]) * focal) + 1, math.ceil((hi[1] - lo[1]) * focal) + 1)
    undistorted_k = np.array([[focal, 0.0, -lo[0] * focal], [0.0, focal, -lo[1] * focal], [0.0, 0.0, 1.0]])
    distortion = np.asarray(model.k, dtype=np.float64)
    map_x, map_y = cv2.fisheye.initUndistortRectifyMap(input_k, distortion, np.eye(3), undistorted_k, size_wh, cv2.CV_32FC1)
    # nninterpolation: a rounded integer map, the fast path of cv2.remap with INTER_NEAREST
    map_xy = np.asarray(cv2.convertMaps(map_x, map_y, cv2.CV_16SC2, nninterpolation=True)[0], dtype=np.int16)
    writes = owned & (points[..., 2] > 0)  # cells behind the image plane have no place in a pinhole view
    rows, cols = slice(0, grid.rows), slice(0, grid.cols)
    if crop:
        rows_any, cols_any = np.flatnonzero(writes.any(axis=1)), np.flatnonzero(writes.any(axis=0))
        rows, cols = slice(int(rows_any[0]), int(rows_any[-1]) + 1), slice(int(cols_any[0]), int(cols_any[-1]) + 1)
    strip_from_grid = np.array([[1.0, 0.0, -cols.start], [0.0, 1.0, -rows.start], [0.0, 0.0, 1.0]])
    undistorted_from_ground = undistorted_k @ camera.camera_from_vehicle[:3, [0, 1, 3]]  # K' [r1 r2 t]
    strip_from_undistorted = strip_from_grid @ grid_from_ground(grid) @ np.linalg.inv(undistorted_from_ground)
    return CameraStrip(map_xy, strip_from_undistorted, rows, cols, writes[rows, cols].copy())


# --- one input size: inputs, both methods, agreement, timings -------------------------------------


@dataclass(frozen=True)
class WarpCase:
    size_hw: tuple[int, int]
    labels: NDArray[np.uint8]  # (N, h, w)
    projector: BevProjector
    baseline: tuple[CameraStrip, ...]  # strips cropped to each camera's cells, as existing code does
    baseline_full_grid: tuple[CameraStrip, ...]  # every camera warped onto the whole grid
    fill: NDArray[np.uint8]  # EGO on the footprint, UNKNOWN elsewhere: the cells no camera writes
    truth: NDArray[np.uint8]

    @property
    def name(self) -> str:
        return f"{self.size_hw[1]}x{self.size_hw[0]}"

    def ours(self) -> NDArray[np.uint8]:
        return self.projector.warp_labels(self.labels)

    def theirs(self, *, full_grid: bool = False) -> NDArray[np.uint8]:
        return baseline_warp(self.baseline_full_grid if full_grid else self.baseline, self.labels, self.fill, UNKNOWN)


def prepare_case(rig: Rig, projector: BevProjector, size_hw: tuple[int, int]) -> WarpCase:
    """Inputs, truth and the baseline's tables for input size ``size_hw``, with the same owner per cell as ours."""
    tables = projector.tables

    def strips(crop: bool) -> tuple[CameraStrip, ...]:
        return tuple(camera_strip(cam, tables.owner == i, rig.grid, size_hw, crop) for i, cam in enumerate(rig.cameras))

    fill = np.where(tables.ego, np.uint8(EGO), np.uint8(UNKNOWN))
    return WarpCase(size_hw, render_labels(rig, size_hw), projector, strips(True), strips(False), fill, truth_grid(tables))


def agreement(case: WarpCase) -> dict[str, float]:
    """How far ours and the baseline compute the same grid, and how far each meets the truth.

    agreement: share of all grid cells equal in both; agreement_seen: the same over the cells our
    tables read from a camera; agreement_covered: over the cells the baseline also reads;
    baseline_lost: share of seen cells the baseline cannot read (beyond its pinhole view);
    truth_ours / truth_baseline: share of the seen cells (covered, for the baseline) equal to the truth.
    """
    ours, theirs = case.ours(), case.theirs()
    # The cropped strips and the whole grid are the same homography with another offset: the rounding of
    # a sample that falls on a pixel's edge may differ (one cell of the default rig at 480x320), no more.
    mismatch = float(np.mean(theirs != case.theirs(full_grid=True)))
    if mismatch > 1e-4:
        raise AssertionError(f"the cropped and the full-grid baselines disagree on {mismatch:.2%} of the cells")
    seen = case.projector.tables.owner != NO_CAMERA
    covered = seen & (theirs != UNKNOWN)
    same = ours == theirs
    return {
        "agreement": float(same.mean()),
        "agreement_seen": float(same[seen].mean()),
        "agreement_covered": float(same[covered].mean()),
        "baseline_lost": float(1.0 - covered.sum() / seen.sum()),
        "truth_ours": float((ours == case.truth)[seen].mean()),
        "truth_baseline": float((theirs == case.truth)[covered].mean()),
    }


def source_pixel_offsets(case: WarpCase) -> dict[str, float]:
    """How far apart the camera pixels are that ours and the baseline read for the same cell.

    The baseline warps two uint16 images holding each pixel's column and row; the cells it covers then
    hold the pixel it read, to compare with our gather table. Two nearest-neighbour resamplings (via the
    undistorted view) against one should differ by about a pixel, no more.
    """
    n, (h, w) = len(case.projector.rig.cameras), case.size_hw
    rows, cols = np.mgrid[0:h, 0:w].astype(np.uint16)
    none = int(np.iinfo(np.uint16).max)
    blank = np.full(case.fill.shape, none, dtype=np.uint16)
    base_col = baseline_warp(case.baseline, np.broadcast_to(cols, (n, h, w)), blank, none).astype(np.float64)
    base_row = baseline_warp(case.baseline, np.broadcast_to(rows, (n, h, w)), blank, none).astype(np.float64)
    index = case.projector.label_table(case.size_hw).index.reshape(case.fill.shape)
    covered = (case.projector.tables.owner != NO_CAMERA) & (base_col != none) & (base_row != none)
    offset = np.hypot(base_col - index % w, base_row - index // w % h)[covered]
    return {
        "source_px_within_1": float((offset <= 1.0 + 1e-9).mean()),
        "source_px_within_2": float((offset <= 2.0 + 1e-9).mean()),
        "source_px_max": float(offset.max()),
    }


def time_case(case: WarpCase, repeat: int, warmup: int, *, full_grid: bool = True) -> list[Timing]:
    """Ours, the baseline (and the full-grid baseline) on the same inputs, interleaved call by call."""
    calls = {f"ours {case.name}": case.ours, f"baseline {case.name}": case.theirs}
    if full_grid:
        calls[f"baseline full-grid {case.name}"] = lambda: case.theirs(full_grid=True)
    return time_interleaved(calls, repeat=repeat, warmup=warmup)


def time_baseline_one_thread(case: WarpCase, repeat: int, warmup: int) -> Timing:
    """The baseline with OpenCV on one thread, as ours runs (a per-core comparison)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return time_call(case.theirs, repeat=repeat, warmup=warmup, name=f"baseline 1 thr {case.name}")
    finally:
        cv2.setNumThreads(threads)


def time_torch_cpu(case: WarpCase, repeat: int, warmup: int, threads: int | None = None) -> Timing:
    """warp_labels on a CPU torch tensor, with torch's default thread count or ``threads``."""
    import torch

    labels = torch.from_numpy(case.labels)
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        name = f"ours torch-cpu {torch.get_num_threads()} thr {case.name}"
        return time_call(lambda: case.projector.warp_labels(labels), repeat=repeat, warmup=warmup, name=name)
    finally:
        torch.set_num_threads(default_threads)


def time_table_build(rig: Rig, size_hw: tuple[int, int], runs: int) -> float:
    """Median seconds to build the tables of the rig and the label table for one input size, from scratch."""
    return float(np.median([time_once_s(lambda: BevProjector(rig).label_table(size_hw)) for _ in range(runs)]))


# --- the run --------------------------------------------------------------------------------------


def measure(rig: Rig, *, repeat: int, quick: bool) -> tuple[list[Timing], dict[str, Any]]:
    """Every measurement of the bench; returns the timings (for the table) and the JSON figures."""
    import torch

    warmup = 3 if quick else 20
    full_hw = rig.cameras[0].image_size_hw
    table_build_s = time_table_build(rig, full_hw, runs=1 if quick else 3)
    projector = BevProjector(rig)
    full, network = prepare_case(rig, projector, full_hw), prepare_case(rig, projector, NETWORK_SIZE_HW)
    ours, theirs, theirs_full_grid = time_case(full, repeat, warmup)
    ours_net, theirs_net = time_case(network, repeat, warmup, full_grid=False)
    theirs_1t = time_baseline_one_thread(full, repeat, warmup)
    # back to back, ours finds its tables and labels in cache (interleaved, the baseline evicts them)
    ours_hot = time_call(
        lambda: projector.warp_labels(full.labels), repeat=repeat, warmup=warmup, name=f"ours back-to-back {full.name}"
    )
    torch_cpu, torch_cpu_1t = time_torch_cpu(full, repeat, warmup), time_torch_cpu(full, repeat, warmup, threads=1)
    agree, agree_net = agreement(full), agreement(network)
    figures: dict[str, Any] = {
        "warp_ms": ours.median_ms,
        "baseline_ms": theirs.median_ms,
        "speedup": theirs.median_ms / ours.median_ms,
        "speedup_min": theirs.min_ms / ours.min_ms,
        "warp_p99_ms": ours.p99_ms,
        "warp_hot_ms": ours_hot.median_ms,
        "baseline_p99_ms": theirs.p99_ms,
        "baseline_full_grid_ms": theirs_full_grid.median_ms,
        "baseline_1thread_ms": theirs_1t.median_ms,
        "warp_ms_480x320": ours_net.median_ms,
        "baseline_ms_480x320": theirs_net.median_ms,
        "speedup_480x320": theirs_net.median_ms / ours_net.median_ms,
        "torch_cpu_ms": torch_cpu.median_ms,
        "torch_cpu_1thread_ms": torch_cpu_1t.median_ms,
        "table_build_s": table_build_s,
        **agree,
        **source_pixel_offsets(full),
        "agreement_480x320": agree_net["agreement"],
        "agreement_covered_480x320": agree_net["agreement_covered"],
        "grid": list(rig.grid.shape),
        "input_hw": list(full_hw),
        "repeat": repeat,
        "threads": {"cv2": cv2.getNumThreads(), "torch": torch.get_num_threads()},
        "machine": machine(),
        "load_1m": os.getloadavg()[0],
    }
    return [ours, theirs, theirs_full_grid, theirs_1t, ours_hot, ours_net, theirs_net, torch_cpu, torch_cpu_1t], figures


def _tables_by_size(timings: list[Timing]) -> list[str]:
    """One timing table per input size, its speed-up column against that size's baseline."""
    tables = []
    for size in dict.fromkeys(t.name.split()[-1] for t in timings):
        rows = [t for t in timings if t.name.endswith(size)]
        reference = next(t for t in rows if t.name == f"baseline {size}")
        tables += [format_table(rows, reference=reference), ""]
    return tables


def report(timings: list[Timing], figures: dict[str, Any]) -> str:
    """The human part of the output: machine, timing table, agreement."""
    f = figures
    lines = [
        f"machine: {f['machine']}; threads cv2={f['threads']['cv2']} torch={f['threads']['torch']}; "
        f"load average {f['load_1m']:.2f} (other processes slow the timings; compare runs at low load)",
        f"grid {f['grid'][0]}x{f['grid'][1]} cells, input {f['input_hw'][1]}x{f['input_hw'][0]} and 480x320; "
        f"table build {f['table_build_s']:.3f} s (goal < 1 s)",
        "",
        *_tables_by_size(timings),
        f"speed-up {f['speedup']:.1f}x at full resolution (goal >= 20x), {f['speedup_480x320']:.1f}x at 480x320; "
        f"ours {f['warp_ms']:.3f} ms per frame set (goal < 1 ms); ratio of the fastest calls {f['speedup_min']:.1f}x",
        f"agreement ours/baseline: {f['agreement']:.4f} of all cells, {f['agreement_seen']:.4f} of seen cells, "
        f"{f['agreement_covered']:.4f} of cells both read ({f['agreement_covered_480x320']:.4f} at 480x320)",
        f"baseline loses {f['baseline_lost']:.4f} of seen cells (beyond {PINHOLE_MAX_ANGLE_DEG:.0f} deg off-axis or behind "
        f"its camera); it reads the same camera pixel as ours within 1 px on {f['source_px_within_1']:.4f} of the "
        f"cells both read, within 2 px on {f['source_px_within_2']:.4f} (max {f['source_px_max']:.2f} px)",
        f"against the true ground: ours {f['truth_ours']:.4f}, baseline {f['truth_baseline']:.4f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__.splitlines()[0] if __doc__ else "warp bench", default_repeat=300)
    parser.add_argument("--rig", type=Path, default=DEFAULT_RIG, help="rig file (default: the default rig)")
    args = parser.parse_args(argv)
    repeat = min(args.repeat, 20) if args.quick else args.repeat
    timings, figures = measure(load_rig(args.rig), repeat=repeat, quick=args.quick)
    print(report(timings, figures))
    print(json_line("warp", figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
