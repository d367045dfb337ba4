"""The BEV grid as the cell arrays of ``foxglove.Grid`` and ``nav_msgs/msg/OccupancyGrid``.

Both messages lay cells out from the corner of their cell (0, 0) along the axes of their ``pose`` / ``origin``:
column i along that pose's x, row j along its y, row-major (``data[j * width + i]``). The BEV grid is a top-down
picture (row 0 forward-most, column 0 left-most: ``bev_service.geometry.grid``), which no rotation turns into that
layout (it is mirrored). So the messages take the vehicle frame's own axes: the pose is the identity rotation at the
grid's rear-right corner (x_min, y_min, 0), message column i is the i-th cell from the back (x increasing, ``width``
= the BEV grid's rows) and message row j the j-th cell from the right (y increasing, ``height`` = the BEV's columns):

    message_cells[j, i] = bev[rows - 1 - i, cols - 1 - j]   (``bev_service.geometry.grid.cells_along_axes``)

``foxglove.Grid`` carries the class ids themselves (field ``class_id``, beside the colours). ``OccupancyGrid`` is an
occupancy map, as ROS tools (RViz, nav2 costmaps) read it: int8, 0 free, 100 occupied, -1 unknown, exactly:
    ground classes (road, lane_marking, curb_sidewalk, terrain: ``ground`` in ``bev_service.classes``)  ->  0
    vehicle, pedestrian, static_obstacle                                                                ->  100
    background (seen, and not ground: walls, buildings, anything standing off the ground plane)         ->  100
    ego (254, the vehicle's own footprint)                                                              ->  100
    unknown (255, seen by no camera)                                                                    ->  -1
Background counts as occupied: it is not ground to drive on, and in a BEV cell it is mostly the foot of a wall.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from bev_service.classes import CLASSES, NUM_CLASSES, rgba_palette
from bev_service.geometry.grid import EGO, UNKNOWN, BevGrid, cells_along_axes

OCCUPIED = 100
FREE = 0
OCCUPANCY_UNKNOWN = -1


def _occupancy_table() -> NDArray[np.int8]:
    """(256,) OccupancyGrid value by BEV value (``bev_service.classes``); values that are no class stay 0 (refused)."""
    table = np.zeros(256, dtype=np.int8)
    for c in CLASSES:
        table[c.id] = FREE if c.ground else OCCUPIED
    table[EGO] = OCCUPIED
    table[UNKNOWN] = OCCUPANCY_UNKNOWN
    return table


OCCUPANCY_FROM_BEV = _occupancy_table()
RGBA = rgba_palette()


def occupancy_values() -> dict[str, int]:
    """{class name (and ego, unknown): OccupancyGrid value}, as output metadata records it."""
    names = {c.id: c.name for c in CLASSES} | {EGO: "ego", UNKNOWN: "unknown"}
    return {name: int(OCCUPANCY_FROM_BEV[value]) for value, name in names.items()}


def occupancy_from_bev(bev: NDArray[np.uint8]) -> NDArray[np.int8]:
    """BEV values to OccupancyGrid values (same shape), as the module docstring maps them."""
    if bev.size and int(bev[(bev != EGO) & (bev != UNKNOWN)].max(initial=0)) >= NUM_CLASSES:
        raise ValueError(f"grid values are class ids below {NUM_CLASSES}, {EGO} or {UNKNOWN}")
    return OCCUPANCY_FROM_BEV[bev]


def message_layout(grid: BevGrid, frame_id: str) -> dict[str, Any]:
    """How both messages lay the BEV grid out (see the module docstring), as output metadata records it."""
    rows, cols = grid.shape
    return {
        "frame_id": frame_id,
        "origin_xy_m": list(grid.rear_right_corner_m),
        "width": rows,
        "height": cols,
        "cell": "message[j, i] = bev[rows - 1 - i, cols - 1 - j]",
        "columns_along": "+x",
        "rows_along": "+y",
    }


def coloured_cells(bev: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(cols, rows, 5) message cells of class id, red, green, blue, alpha: the class table's colours, opaque except
    unknown cells (alpha 0, so that what lies under the grid shows through)."""
    cells = cells_along_axes(bev)
    rgba = np.empty((*cells.shape, 5), dtype=np.uint8)
    rgba[..., 0] = cells
    rgba[..., 1:] = RGBA[cells]
    return rgba
