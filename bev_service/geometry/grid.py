"""The top-down BEV grid around the vehicle and its row/column convention.

Row 0 is the forward-most row (largest x), column 0 the left-most column (largest y): the grid reads
as a top-down picture with forward up and the vehicle's left on the left. Cell (row, col) covers
x in [x_max - (row + 1) s, x_max - row s] and y in [y_max - (col + 1) s, y_max - col s].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

ROW_COL_CONVENTION = "row 0 = largest x (forward), col 0 = largest y (left); top-down, forward up"
VEHICLE_FRAME = "vehicle (ISO 8855: x forward, y left, z up, metres)"
UNKNOWN = 255
EGO = 254


@dataclass(frozen=True)
class BevGrid:
    """A metric grid on the ground plane of the vehicle frame."""

    x_range_m: tuple[float, float]
    y_range_m: tuple[float, float]
    cell_size_m: float

    def __post_init__(self) -> None:
        if not self.cell_size_m > 0:
            raise ValueError(f"cell_size_m must be positive, got {self.cell_size_m}")
        for name, (lo, hi) in (("x_range_m", self.x_range_m), ("y_range_m", self.y_range_m)):
            if not hi > lo:
                raise ValueError(f"{name} must be (min, max) with max > min, got ({lo}, {hi})")
            cells = (hi - lo) / self.cell_size_m
            if abs(cells - round(cells)) > 1e-6 * max(1.0, cells):
                raise ValueError(f"{name} ({lo}, {hi}) is not a whole number of {self.cell_size_m} m cells")

    @property
    def rows(self) -> int:
        return round((self.x_range_m[1] - self.x_range_m[0]) / self.cell_size_m)

    @property
    def cols(self) -> int:
        return round((self.y_range_m[1] - self.y_range_m[0]) / self.cell_size_m)

    @property
    def rear_right_corner_m(self) -> tuple[float, float]:
        """(x_min, y_min): the corner where ``cells_along_axes`` starts."""
        return float(self.x_range_m[0]), float(self.y_range_m[0])

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    def vehicle_xy_from_cell(self, rows: ArrayLike, cols: ArrayLike) -> NDArray[np.float64]:
        """Vehicle-frame (x, y) of (fractional) cell indices; integer indices give cell centres."""
        r = np.asarray(rows, dtype=np.float64)
        c = np.asarray(cols, dtype=np.float64)
        x = self.x_range_m[1] - (r + 0.5) * self.cell_size_m
        y = self.y_range_m[1] - (c + 0.5) * self.cell_size_m
        return np.stack([x, y], axis=-1)

    def cell_from_vehicle_xy(self, xy: ArrayLike) -> NDArray[np.float64]:
        """Fractional (row, col) of vehicle-frame points; floor gives the cell that holds them."""
        p = np.asarray(xy, dtype=np.float64)
        row = (self.x_range_m[1] - p[..., 0]) / self.cell_size_m
        col = (self.y_range_m[1] - p[..., 1]) / self.cell_size_m
        return np.stack([row, col], axis=-1)

    def cell_centres(self) -> NDArray[np.float64]:
        """(rows, cols, 2) vehicle-frame (x, y) of every cell centre."""
        r, c = np.meshgrid(np.arange(self.rows), np.arange(self.cols), indexing="ij")
        return self.vehicle_xy_from_cell(r, c)

    def metadata(self) -> dict[str, Any]:
        return {
            "cell_size_m": self.cell_size_m,
            "x_range_m": list(self.x_range_m),
            "y_range_m": list(self.y_range_m),
            "rows": self.rows,
            "cols": self.cols,
            "frame": VEHICLE_FRAME,
            "row_col_convention": ROW_COL_CONVENTION,
            "unknown_value": UNKNOWN,
            "ego_value": EGO,
        }


# A camera inside the body box within this distance of a face (a bumper camera, a mirror camera over the
# sill) looks out through that face: the box stands for the body's outline, the camera sits on it.
BODY_CLEARANCE_M = 0.4


@dataclass(frozen=True)
class EgoBox:
    """The vehicle's own footprint, an axis-aligned box in the vehicle frame; with ``height_m``, also
    its body: the box from the ground up to that height, which hides the ground behind it."""

    x_range_m: tuple[float, float]
    y_range_m: tuple[float, float]
    height_m: float | None = None

    def __post_init__(self) -> None:
        for name, (lo, hi) in (("x_range_m", self.x_range_m), ("y_range_m", self.y_range_m)):
            if not hi > lo:
                raise ValueError(f"ego {name} must be (min, max) with max > min, got ({lo}, {hi})")
        if self.height_m is not None and not self.height_m > 0:
            raise ValueError(f"ego height_m must be positive, got {self.height_m}")

    def hides(self, origin_xyz: ArrayLike, ground_xy: ArrayLike, clearance_m: float = BODY_CLEARANCE_M) -> NDArray[np.bool_]:
        """(...,) whether the body stands between a camera at ``origin_xyz`` and each ground point (..., 2):
        the segment between them passes through the body box (slab test, vectorised). A camera inside the
        box within ``clearance_m`` of a face (a bumper or mirror camera on the body's outline) looks out
        through that face: it is taken to sit just outside it. All False without ``height_m``."""
        points = np.asarray(ground_xy, dtype=np.float64)
        if self.height_m is None:
            return np.zeros(points.shape[:-1], dtype=bool)
        lo = np.array([self.x_range_m[0], self.y_range_m[0], 0.0])
        hi = np.array([self.x_range_m[1], self.y_range_m[1], self.height_m])
        origin = np.asarray(origin_xyz, dtype=np.float64).copy()
        if ((lo <= origin) & (origin <= hi)).all():
            gaps = np.concatenate([origin - lo, hi - origin])  # to the faces x0, y0, z0, x1, y1, z1
            gaps[2] = np.inf  # not out through the ground
            face = int(np.argmin(gaps))
            if gaps[face] <= clearance_m:
                axis, outward = face % 3, (-1.0 if face < 3 else 1.0)
                origin[axis] = (lo if face < 3 else hi)[axis] + outward * 1e-6
        ray = np.concatenate([points, np.zeros_like(points[..., :1])], axis=-1) - origin
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (lo - origin) / ray, (hi - origin) / ray
        parallel = ray == 0  # inside that slab for the whole ray, or never
        within = (lo <= origin) & (origin <= hi)
        t_low = np.where(parallel, np.where(within, -np.inf, np.inf), np.minimum(t1, t2))
        t_high = np.where(parallel, np.where(within, np.inf, -np.inf), np.maximum(t1, t2))
        enter = np.maximum(t_low.max(axis=-1), 0.0)
        leave = np.minimum(t_high.min(axis=-1), 1.0)
        return np.asarray(leave > enter)

    def contains(self, xy: ArrayLike) -> NDArray[np.bool_]:
        p = np.asarray(xy, dtype=np.float64)
        x, y = p[..., 0], p[..., 1]
        inside_x = (x >= self.x_range_m[0]) & (x <= self.x_range_m[1])
        return np.asarray(inside_x & (y >= self.y_range_m[0]) & (y <= self.y_range_m[1]))


def cells_along_axes(values: NDArray[Any]) -> NDArray[Any]:
    """A (rows, cols) grid as (cols, rows) cells along the vehicle frame's axes: cell [j, i] is the i-th from
    the rear (along +x) and the j-th from the right (along +y), ``values[rows - 1 - i, cols - 1 - j]``. The
    layout of ``foxglove.Grid`` and ``nav_msgs/msg/OccupancyGrid`` with an unrotated pose at the grid's
    rear-right corner (``BevGrid.rear_right_corner_m``): a mirror image of the top-down picture, which no
    rotation gives."""
    return np.ascontiguousarray(values[::-1, ::-1].T)


def cells_as_picture(cells: NDArray[Any]) -> NDArray[Any]:
    """The inverse of ``cells_along_axes``."""
    return np.ascontiguousarray(cells.T[::-1, ::-1])
