"""BEV lookup tables: for every grid cell, the camera that owns it and the pixel it reads.

Built once per rig (``build_ground_tables``), then specialised once per input resolution
(``label_gather_table``, ``image_gather_table``). The owner of a cell is the camera that sees it best:
the one whose pixels cover the smallest ground footprint there (largest pixels per square metre),
weighted by the angle from its optical axis (``view_weight``). Ownership is label-safe: one camera
per cell, nearest neighbour, never a blend of class ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
        pixel_uv[i] = cam.pixel_from_ground(centres)[0]  # NaN where masked or outside the image
        density[i] = ground_density(cam, centres, step_m=grid.cell_size_m / 2)
        density[i][rig.ego.hides(cam.centre, centres)] = 0.0  # the body hides what lies behind it (with an ego height)
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


SizeHW = tuple[int, int]
# How far a camera's input may miss its calibrated aspect ratio: the rounding of each side to the network's
# multiple of 8 (at small sizes a few per cent). The tables scale u and v separately, so they stay exact.
ASPECT_TOLERANCE = 0.05


@dataclass(frozen=True)
class LabelGatherTable:
    """Flat indices into the cameras' label maps laid end to end (camera i's (h_i, w_i) map, row by
    row, after those of cameras 0..i-1), one per grid cell (nearest neighbour). When every camera has
    the same size this is the flat index into the stacked (N, h, w) batch.

    index: (rows * cols,) intp, into the owner camera's map (0 on fixed cells); intp so that
      ``np.take`` uses it as is instead of converting 160k indices on every call.
    fixed: (rows * cols,) bool, cells not read from any camera (unknown, ego).
    fixed_index / fixed_fill: the fixed cells' flat positions and values (a few thousand), so the
      warp overwrites only them.
    stacked_xy: (rows, cols, 2) int16 (column, row) of each cell's pixel in the cameras' maps stacked
      vertically into one (N * h, w) image, (-1, -1) on fixed cells: the same gather as ``index``
      in the form of an OpenCV fixed-point remap table; None when the cameras' sizes differ or N * h
      or w exceeds int16.
    per_camera_index / per_camera_seen: (N, rows * cols), every camera's pixel for every cell, for
      confidence fusion.
    """

    input_sizes_hw: tuple[SizeHW, ...]
    index: NDArray[np.intp]
    fixed: NDArray[np.bool_]
    fixed_index: NDArray[np.intp]
    fixed_fill: NDArray[np.uint8]
    stacked_xy: NDArray[np.int16] | None
    per_camera_index: NDArray[np.int64]
    per_camera_seen: NDArray[np.bool_]


def per_camera_sizes(tables: GroundTables, input_size_hw: SizeHW | Sequence[SizeHW]) -> tuple[SizeHW, ...]:
    """One (h, w) per camera, in rig order: ``input_size_hw`` is one size for every camera or a size per camera."""
    n = len(tables.camera_names)
    items: list[Any] = list(input_size_hw)
    if len(items) == 2 and all(isinstance(v, int | np.integer) for v in items):
        return ((int(items[0]), int(items[1])),) * n
    if len(items) != n or any(len(size) != 2 for size in items):
        raise ValueError(f"expected one (h, w) for every camera or one per camera ({n}), got {input_size_hw}")
    return tuple((int(size[0]), int(size[1])) for size in items)


def check_input_size(tables: GroundTables, input_size_hw: SizeHW | Sequence[SizeHW]) -> tuple[SizeHW, ...]:
    """The per-camera sizes; ValueError unless each is positive and keeps its camera's calibrated aspect
    ratio (within ``ASPECT_TOLERANCE``, or half a pixel)."""
    sizes = per_camera_sizes(tables, input_size_hw)
    for name, (ch, cw), (h, w) in zip(tables.camera_names, tables.image_sizes_hw, sizes, strict=True):
        if h <= 0 or w <= 0:
            raise ValueError(f"camera {name!r}: input size must be positive (height, width), got {(h, w)}")
        if abs(h * cw / ch - w) > max(0.5, ASPECT_TOLERANCE * w):
            raise ValueError(f"camera {name!r}: input {w}x{h} (w x h) does not keep the calibrated aspect ratio of {cw}x{ch}")
    return sizes


def _layout(sizes: tuple[SizeHW, ...]) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Per camera: height, width, and the offset of its first pixel when the maps are laid end to end."""
    hs = np.array([h for h, _ in sizes], dtype=np.int64)
    ws = np.array([w for _, w in sizes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(hs * ws)[:-1]]).astype(np.int64)
    return hs, ws, offsets


def _scaled_edges(tables: GroundTables, sizes: tuple[SizeHW, ...]) -> NDArray[np.float64]:
    """(N, rows, cols, 2) pixel positions in each camera's input-resolution image, measured from the
    image's top-left corner (pixel i spans [i, i + 1)), so that scaling the image scales them exactly."""
    hs, ws, _ = _layout(sizes)
    calibrated = np.asarray(tables.image_sizes_hw, dtype=np.float64)  # (N, 2) as (h, w)
    scale_uv = np.stack([ws / calibrated[:, 1], hs / calibrated[:, 0]], axis=-1)[:, None, None, :]
    return (tables.pixel_uv + 0.5) * scale_uv


def label_gather_table(tables: GroundTables, input_size_hw: SizeHW | Sequence[SizeHW]) -> LabelGatherTable:
    sizes = check_input_size(tables, input_size_hw)
    hs, ws, offsets = _layout(sizes)
    n = len(tables.camera_names)
    # Nearest pixel = the one whose area holds the point: at 1/k of the calibrated resolution it
    # is the block of k x k calibrated pixels that holds it (floor(U / k) of its nearest pixel U).
    uv = _scaled_edges(tables, sizes)
    seen = tables.seen & ~tables.ego[None]
    h_of, w_of, start = hs[:, None, None], ws[:, None, None], offsets[:, None, None]
    cols = np.clip(np.floor(np.nan_to_num(uv[..., 0])), 0, w_of - 1).astype(np.int64)
    rows = np.clip(np.floor(np.nan_to_num(uv[..., 1])), 0, h_of - 1).astype(np.int64)
    per_camera = np.where(seen, start + rows * w_of + cols, 0).reshape(n, -1)
    owner = tables.owner.reshape(-1)
    fixed = owner == NO_CAMERA
    fill = tables.fixed_values().reshape(-1)
    index = per_camera[np.maximum(owner, 0), np.arange(owner.size)]
    stacked_hw = (n * sizes[0][0], sizes[0][1])
    stacked = _stacked_xy(np.where(fixed, -1, index), stacked_hw, tables.grid.shape) if len(set(sizes)) == 1 else None
    return LabelGatherTable(
        input_sizes_hw=sizes,
        index=np.where(fixed, 0, index).astype(np.intp),
        fixed=fixed,
        fixed_index=np.flatnonzero(fixed),
        fixed_fill=fill[fixed],
        stacked_xy=stacked,
        per_camera_index=per_camera,
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
    """Bilinear taps into the cameras' images laid end to end (as ``LabelGatherTable``): four flat pixel
    indices and weights per cell."""

    input_sizes_hw: tuple[SizeHW, ...]
    taps: NDArray[np.int64]  # (rows * cols, 4)
    weights: NDArray[np.float32]  # (rows * cols, 4), zero on unseen and ego cells
    seen: NDArray[np.bool_]  # (rows * cols,)


def image_gather_table(tables: GroundTables, input_size_hw: SizeHW | Sequence[SizeHW]) -> ImageGatherTable:
    sizes = check_input_size(tables, input_size_hw)
    hs, ws, offsets = _layout(sizes)
    owner = tables.owner.reshape(-1)
    seen = owner != NO_CAMERA
    cam = np.maximum(owner, 0)
    h_of, w_of = hs[cam], ws[cam]
    uv = _scaled_edges(tables, sizes).reshape(len(tables.camera_names), -1, 2) - 0.5  # centres at integers
    uv = np.nan_to_num(uv[cam, np.arange(owner.size)])  # (cells, 2)
    u = np.clip(uv[:, 0], 0, w_of - 1)
    v = np.clip(uv[:, 1], 0, h_of - 1)
    u0 = np.minimum(np.floor(u), w_of - 2).astype(np.int64)
    v0 = np.minimum(np.floor(v), h_of - 2).astype(np.int64)
    fu, fv = u - u0, v - v0
    base = offsets[cam] + v0 * w_of + u0
    taps = np.stack([base, base + 1, base + w_of, base + w_of + 1], axis=-1)
    weights = np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], axis=-1)
    weights *= seen[:, None]
    return ImageGatherTable(input_sizes_hw=sizes, taps=taps, weights=weights.astype(np.float32), seen=seen)
