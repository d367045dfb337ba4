"""The one class table: ids, names, colours. Grid-only values EGO (254) and UNKNOWN (255)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bev_service.geometry.grid import EGO, UNKNOWN


@dataclass(frozen=True)
class SemanticClass:
    id: int
    name: str
    color_rgb: tuple[int, int, int]
    ground: bool  # lies flat on the ground plane (its BEV warp is exact), else has height
    description: str


CLASSES: tuple[SemanticClass, ...] = (
    SemanticClass(0, "background", (0, 0, 0), False, "image only: sky, walls, anything off the ground grid"),
    SemanticClass(1, "road", (128, 64, 128), True, "drivable asphalt or paving"),
    SemanticClass(2, "lane_marking", (255, 255, 255), True, "lane lines, crosswalks, parking-bay lines"),
    SemanticClass(3, "curb_sidewalk", (244, 35, 232), True, "curbs and sidewalks"),
    SemanticClass(4, "terrain", (107, 142, 35), True, "grass, soil, vegetation"),
    SemanticClass(5, "vehicle", (0, 0, 142), False, "cars, vans, trucks"),
    SemanticClass(6, "pedestrian", (220, 20, 60), False, "people"),
    SemanticClass(7, "static_obstacle", (250, 170, 30), False, "cones, poles, barriers"),
)
NUM_CLASSES = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)  # in id order: what a model must predict
CLASS_IDS = {c.name: c.id for c in CLASSES}
EGO_COLOR = (60, 60, 60)
UNKNOWN_COLOR = (20, 20, 20)


def palette() -> NDArray[np.uint8]:
    """(256, 3) RGB colours indexed by grid value: classes, EGO and UNKNOWN; the rest black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    for c in CLASSES:
        table[c.id] = c.color_rgb
    table[EGO] = EGO_COLOR
    table[UNKNOWN] = UNKNOWN_COLOR
    return table


def rgba_palette() -> NDArray[np.uint8]:
    """(256, 4) RGBA by grid value: ``palette`` opaque, and UNKNOWN transparent (alpha 0), so that what lies
    under a drawn grid shows through where no camera sees."""
    table = np.full((256, 4), 255, dtype=np.uint8)
    table[:, :3] = palette()
    table[UNKNOWN, 3] = 0
    return table


def colorize(labels: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Class ids (h, w) to an RGB picture (h, w, 3)."""
    return palette()[labels]


def class_table() -> list[dict[str, Any]]:
    """The table as the API and metadata files expose it."""
    rows: list[dict[str, Any]] = [
        {"id": c.id, "name": c.name, "color_rgb": list(c.color_rgb), "ground": c.ground, "description": c.description}
        for c in CLASSES
    ]
    rows.append(
        {
            "id": EGO,
            "name": "ego",
            "color_rgb": list(EGO_COLOR),
            "ground": True,
            "description": "the vehicle's own footprint (grid only)",
        }
    )
    rows.append(
        {
            "id": UNKNOWN,
            "name": "unknown",
            "color_rgb": list(UNKNOWN_COLOR),
            "ground": False,
            "description": "seen by no camera (grid only)",
        }
    )
    return rows
