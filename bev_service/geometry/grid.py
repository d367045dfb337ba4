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


@dataclass(frozen=True)
class EgoBox:
    """The vehicle's own footprint, an axis-aligned box in the vehicle frame."""

    x_range_m: tuple[float, float]
    y_range_m: tuple[float, float]

    def __post_init__(self) -> None:
        for name, (lo, hi) in (("x_range_m", self.x_range_m), ("y_range_m", self.y_range_m)):
            if not hi > lo:
                raise ValueError(f"ego {name} must be (min, max) with max > min, got ({lo}, {hi})")

    def contains(self, xy: ArrayLike) -> NDArray[np.bool_]:
        p = np.asarray(xy, dtype=np.float64)
        x, y = p[..., 0], p[..., 1]
        inside_x = (x >= self.x_range_m[0]) & (x <= self.x_range_m[1])
        return np.asarray(inside_x & (y >= self.y_range_m[0]) & (y <= self.y_range_m[1]))
