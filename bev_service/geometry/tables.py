"""BEV lookup tables: for every grid cell, the camera that owns it and the pixel it reads.

Built once per rig (``build_ground_tables``), then specialised once per input resolution
(``label_gather_table``, ``image_gather_table``). The owner of a cell is the camera that sees it best:
the one whose pixels cover the smallest ground footprint there (largest pixels per square metre),
weighted by the angle from its optical axis (``view_weight``). Ownership is label-safe: one camera
per cell, nearest neighbour, never a blend of class ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bev_service.geometry.grid import EGO, UNKNOWN, BevGrid
from bev_service.geometry.rig import Rig, ground_density

NO_CAMERA = -1
MAX_OWNER_CAMERAS = int(np.iinfo(np.int8).max)  # 127: the widest rig the int8 owner index can name


@dataclass(frozen=True)
class GroundTables:
    """Resolution-independent tables of one rig.

    pixel_uv: (N, rows, cols, 2) float64, each camera's pixel for each cell centre at its
      calibrated resolution (pixel centres at integers), NaN where it does not see the cell.
    density: (N, rows, cols) float64, pixels per square metre (0 where unseen).
    owner: (rows, cols) int8, index of the owning camera or -1 (unseen or ego).
    ego: (rows, cols) bool, the vehicle's own footprint.
    """

    grid: BevGrid
    camera_names: tuple[str, ...]
    image_sizes_hw: tuple[tuple[int, int], ...]
    pixel_uv: NDArray[np.float64]
    density: NDArray[np.float64]
    owner: NDArray[np.int8]
    ego: NDArray[np.bool_]

    @property
    def seen(self) -> NDArray[np.bool_]:
        """(N, rows, cols): which camera sees which cell."""
        return np.asarray(self.density > 0)

    def owner_share(self) -> dict[str, float]:
        """Share of all grid cells that each camera owns."""
        total = self.owner.size
        return {name: float((self.owner == i).sum()) / total for i, name in enumerate(self.camera_names)}

    def fixed_values(self) -> NDArray[np.uint8]:
        """(rows, cols) uint8: EGO on the footprint, UNKNOWN where no camera sees the cell, else 0."""
        fill = np.zeros(self.grid.shape, dtype=np.uint8)
        fill[self.owner == NO_CAMERA] = UNKNOWN
        fill[self.ego] = EGO
        return fill


def view_weight(off_axis_rad: NDArray[np.float64]) -> NDArray[np.float64]:
    """(1 + cos theta) / 2: 1 on the optical axis, 1/2 at 90 degrees off it.

    DESIGN.md names both the ground footprint per pixel and the angle from the optical axis as what
    makes a camera see a cell best. Pixel density alone hands far cells to the very edge of a
    neighbouring fisheye (e.g. a mirror camera 88 degrees off-axis 10 m ahead of the car, by 4%),
    where vignetting, blur and the network's worst accuracy are; this weight leaves near cells to
    the densest camera and gives such cells to the camera that looks at them.
    """
    return np.asarray((1.0 + np.cos(off_axis_rad)) / 2.0)


def build_ground_tables(rig: Rig) -> GroundTables:
    """Project every cell centre into every camera and pick each cell's owner (vectorised)."""
    if len(rig.cameras) > MAX_OWNER_CAMERAS:
        # The owner index is int8: a 129th camera would wrap to -127 and read another camera's pixels.
        raise ValueError(f"{len(rig.cameras)} cameras; the owner index holds at most {MAX_OWNER_CAMERAS}")
    grid = rig.grid
    centres = grid.cell_centres()  # (rows, cols, 2)
    ego = rig.ego.contains(centres)
    pixel_uv = np.empty((len(rig.cameras), *grid.shape, 2), dtype=np.float64)
    density = np.empty((len(rig.cameras), *grid.shape), dtype=np.float64)
    for i, cam in enumerate(rig.cameras):
        pixel_uv[i] = cam.pixel_from_ground(centres)[0]
        density[i] = ground_density(cam, centres, step_m=grid.cell_size_m / 2)
    density[:, ego] = 0.0
    score = density * np.stack([view_weight(cam.off_axis_angle(centres)) for cam in rig.cameras])
    owner = np.where(score.max(axis=0) > 0, score.argmax(axis=0), NO_CAMERA).astype(np.int8)
    return GroundTables(
        grid=grid,
        camera_names=rig.camera_names,
        image_sizes_hw=tuple(cam.image_size_hw for cam in rig.cameras),
        pixel_uv=pixel_uv,
        density=density,
        owner=owner,
        ego=ego,
    )


@dataclass(frozen=True)
class LabelGatherTable:
    """Flat indices into a stacked (N, h, w) label batch, one per grid cell (nearest neighbour).

    index: (rows * cols,) intp, into the owner camera's map (0 on fixed cells); intp so that
      ``np.take`` uses it as is instead of converting 160k indices on every call.
    fixed: (rows * cols,) bool, cells not read from any camera (unknown, ego).
    fixed_index / fixed_fill: the fixed cells' flat positions and values (a few thousand), so the
      warp overwrites only them.
    stacked_xy: (rows, cols, 2) int16 (column, row) of each cell's pixel in the cameras' maps stacked
      vertically into one (N * h, w) image, (-1, -1) on fixed cells: the same gather as ``index``
      in the form of an OpenCV fixed-point remap table; None when N * h or w exceeds int16.
    per_camera_index / per_camera_seen: (N, rows * cols), every camera's pixel for every cell, for
      confidence fusion.
    """

    input_size_hw: tuple[int, int]
    index: NDArray[np.intp]
    fixed: NDArray[np.bool_]
    fixed_index: NDArray[np.intp]
    fixed_fill: NDArray[np.uint8]
    stacked_xy: NDArray[np.int16] | None
    per_camera_index: NDArray[np.int32]
    per_camera_seen: NDArray[np.bool_]


def check_input_size(tables: GroundTables, input_size_hw: tuple[int, int]) -> None:
    """Raise ValueError unless every camera's calibrated size scales to ``input_size_hw`` evenly
    (same aspect ratio within half a pixel)."""
    h, w = input_size_hw
    if h <= 0 or w <= 0:
        raise ValueError(f"input size must be positive (height, width), got {input_size_hw}")
    for name, (ch, cw) in zip(tables.camera_names, tables.image_sizes_hw, strict=True):
        if abs(h * cw / ch - w) > 0.5:
            raise ValueError(f"camera {name!r}: input {w}x{h} (w x h) does not keep the calibrated aspect ratio of {cw}x{ch}")


def _scaled_edges(tables: GroundTables, input_size_hw: tuple[int, int]) -> NDArray[np.float64]:
    """(N, rows, cols, 2) pixel positions in input-resolution images, measured from the image's
    top-left corner (pixel i spans [i, i + 1)), so that scaling the image scales them exactly."""
    h, w = input_size_hw
    sizes = np.asarray(tables.image_sizes_hw, dtype=np.float64)  # (N, 2) as (h, w)
    scale_uv = np.stack([w / sizes[:, 1], h / sizes[:, 0]], axis=-1)[:, None, None, :]
    return (tables.pixel_uv + 0.5) * scale_uv


def label_gather_table(tables: GroundTables, input_size_hw: tuple[int, int]) -> LabelGatherTable:
    check_input_size(tables, input_size_hw)
    h, w = input_size_hw
    n = len(tables.camera_names)
    # Nearest pixel = the one whose area holds the point: at 1/k of the calibrated resolution it
    # is the block of k x k calibrated pixels that holds it (floor(U / k) of its nearest pixel U).
    uv = _scaled_edges(tables, input_size_hw)
    seen = tables.seen & ~tables.ego[None]
    cols = np.clip(np.floor(np.nan_to_num(uv[..., 0])), 0, w - 1).astype(np.int64)
    rows = np.clip(np.floor(np.nan_to_num(uv[..., 1])), 0, h - 1).astype(np.int64)
    camera = np.arange(n)[:, None, None]
    per_camera = np.where(seen, (camera * h + rows) * w + cols, 0).reshape(n, -1)
    owner = tables.owner.reshape(-1)
    fixed = owner == NO_CAMERA
    fill = tables.fixed_values().reshape(-1)
    index = per_camera[np.maximum(owner, 0), np.arange(owner.size)]
    return LabelGatherTable(
        input_size_hw=(h, w),
        index=np.where(fixed, 0, index).astype(np.intp),
        fixed=fixed,
        fixed_index=np.flatnonzero(fixed),
        fixed_fill=fill[fixed],
        stacked_xy=_stacked_xy(np.where(fixed, -1, index), (n * h, w), tables.grid.shape),
        per_camera_index=per_camera.astype(np.int32),
        per_camera_seen=seen.reshape(n, -1),
    )


def _stacked_xy(index: NDArray[np.int64], stacked_hw: tuple[int, int], grid_shape: tuple[int, int]) -> NDArray[np.int16] | None:
    if max(stacked_hw) > np.iinfo(np.int16).max:
        return None
    row, col = np.divmod(index, stacked_hw[1])
    xy = np.stack([np.where(index < 0, -1, col), np.where(index < 0, -1, row)], axis=-1)
    return xy.astype(np.int16).reshape(*grid_shape, 2)


@dataclass(frozen=True)
class ImageGatherTable:
    """Bilinear taps into a stacked (N, h, w, C) image batch: four flat pixel indices and weights per cell."""

    input_size_hw: tuple[int, int]
    taps: NDArray[np.int32]  # (rows * cols, 4)
    weights: NDArray[np.float32]  # (rows * cols, 4), zero on unseen and ego cells
    seen: NDArray[np.bool_]  # (rows * cols,)


def image_gather_table(tables: GroundTables, input_size_hw: tuple[int, int]) -> ImageGatherTable:
    check_input_size(tables, input_size_hw)
    h, w = input_size_hw
    owner = tables.owner.reshape(-1)
    seen = owner != NO_CAMERA
    uv = _scaled_edges(tables, input_size_hw).reshape(len(tables.camera_names), -1, 2) - 0.5  # centres at integers
    uv = np.nan_to_num(uv[np.maximum(owner, 0), np.arange(owner.size)])  # (cells, 2)
    u = np.clip(uv[:, 0], 0, w - 1)
    v = np.clip(uv[:, 1], 0, h - 1)
    u0 = np.minimum(np.floor(u), w - 2).astype(np.int64)
    v0 = np.minimum(np.floor(v), h - 2).astype(np.int64)
    fu, fv = u - u0, v - v0
    base = (np.maximum(owner, 0).astype(np.int64) * h + v0) * w + u0
    taps = np.stack([base, base + 1, base + w, base + w + 1], axis=-1)
    weights = np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], axis=-1)
    weights *= seen[:, None]
    return ImageGatherTable(input_size_hw=(h, w), taps=taps.astype(np.int32), weights=weights.astype(np.float32), seen=seen)
