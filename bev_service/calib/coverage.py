"""Which camera owns each BEV cell: figures and a picture, for checking a rig before using it.

The picture (RGB) has the grid at its top-left, ``scale`` pixels per cell, forward up and the
vehicle's left on the left (the grid's own row/column convention), and a legend to its right:
  - each camera's owned cells in its colour (``CAMERA_COLOURS_RGB``, in rig order);
  - cells that more than one camera sees are hatched (diagonal stripes darkened to 60%);
  - cells no camera sees are dark grey (``UNKNOWN_RGB``), the ego footprint mid grey with a white
    outline;
  - metre lines every 1 m (every 5 m brighter), or only every 5 m when 1 m is under 8 pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from bev_service.geometry.grid import BevGrid
from bev_service.geometry.rig import Rig
from bev_service.geometry.tables import NO_CAMERA, GroundTables, build_ground_tables

# Tableau 10: distinct on screen and for most colour-blind readers.
CAMERA_COLOURS_RGB: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (127, 127, 127),
)
UNKNOWN_RGB = (28, 28, 32)
EGO_RGB = (96, 96, 96)
OVERLAP_SHADE = 0.6
_MIN_PICTURE_PX = 400
_LEGEND_WIDTH_PX = 240
_LINE_PX = 22


def camera_colour(index: int) -> tuple[int, int, int]:
    return CAMERA_COLOURS_RGB[index % len(CAMERA_COLOURS_RGB)]


@dataclass(frozen=True)
class Coverage:
    """Shares are fractions of all grid cells: owner shares + unknown + ego add up to 1."""

    camera_names: tuple[str, ...]
    owner_share: dict[str, float]
    seen_share: dict[str, float]
    overlap_share: float
    unknown_share: float
    ego_share: float
    build_ms: float
    warnings: tuple[str, ...]


def measure_coverage(rig: Rig) -> tuple[GroundTables, Coverage]:
    """Build the rig's lookup tables (timed) and sum up who sees and owns what."""
    start = time.perf_counter()
    tables = build_ground_tables(rig)
    build_ms = (time.perf_counter() - start) * 1000.0
    return tables, coverage_of(tables, build_ms)


def coverage_of(tables: GroundTables, build_ms: float = float("nan")) -> Coverage:
    total = tables.owner.size
    seen = tables.seen  # (N, rows, cols), ego already excluded
    owner_share = tables.owner_share()
    warnings = tuple(
        f"camera {name!r} owns no cell (every cell it sees, another camera sees better)"
        for name, share in owner_share.items()
        if share == 0.0
    )
    return Coverage(
        camera_names=tables.camera_names,
        owner_share=owner_share,
        seen_share={name: float(seen[i].sum()) / total for i, name in enumerate(tables.camera_names)},
        overlap_share=float((seen.sum(axis=0) > 1).sum()) / total,
        unknown_share=float(((tables.owner == NO_CAMERA) & ~tables.ego).sum()) / total,
        ego_share=float(tables.ego.sum()) / total,
        build_ms=build_ms,
        warnings=warnings,
    )


def default_scale(grid: BevGrid) -> int:
    """Whole pixels per cell so that the grid's longer side is at least 400 pixels."""
    return max(1, int(np.ceil(_MIN_PICTURE_PX / max(grid.shape))))


def grid_line_step_m(grid: BevGrid, scale: int) -> float:
    return 1.0 if scale / grid.cell_size_m >= 8 else 5.0


def coverage_picture(
    tables: GroundTables, coverage: Coverage, *, scale: int | None = None, grid_lines: bool = True
) -> tuple[NDArray[np.uint8], dict[str, Any]]:
    """The picture (RGB uint8) and its layout (scale, where the grid is, line spacing)."""
    grid = tables.grid
    s = default_scale(grid) if scale is None else scale
    if s < 1:
        raise ValueError(f"scale must be a whole number of pixels per cell >= 1, got {s}")
    cells = _cell_colours(tables)
    picture = np.repeat(np.repeat(cells, s, axis=0), s, axis=1)  # (rows * s, cols * s, 3)
    _hatch(picture, np.repeat(np.repeat(tables.seen.sum(axis=0) > 1, s, axis=0), s, axis=1))
    step = grid_line_step_m(grid, s)
    if grid_lines:
        _draw_metre_lines(picture, grid, s, step)
    _outline_ego(picture, tables.ego, s)
    canvas = _with_legend(picture, coverage)
    layout = {
        "scale_px_per_cell": s,
        "grid_box_xywh_px": [0, 0, grid.cols * s, grid.rows * s],
        "grid_line_step_m": step if grid_lines else None,
        "orientation": "forward up, vehicle left on the left (grid row 0 at the top)",
    }
    return canvas, layout


def _cell_colours(tables: GroundTables) -> NDArray[np.uint8]:
    palette = np.array([camera_colour(i) for i in range(len(tables.camera_names))] + [UNKNOWN_RGB], dtype=np.uint8)
    cells = palette[np.where(tables.owner == NO_CAMERA, len(tables.camera_names), tables.owner)]  # (rows, cols, 3)
    cells[tables.ego] = EGO_RGB
    return cells


def _hatch(picture: NDArray[np.uint8], overlap: NDArray[np.bool_]) -> None:
    rows, cols = np.indices(overlap.shape)
    stripes = (rows + cols) % 8 < 3
    shade = overlap & stripes
    picture[shade] = (picture[shade] * OVERLAP_SHADE).astype(np.uint8)


def _draw_metre_lines(picture: NDArray[np.uint8], grid: BevGrid, scale: int, step_m: float) -> None:
    """Lines at every multiple of ``step_m`` in x (rows) and y (columns); multiples of 5 m brighter."""
    px_per_m = scale / grid.cell_size_m
    for lo, hi, axis in ((grid.x_range_m[0], grid.x_range_m[1], 0), (grid.y_range_m[0], grid.y_range_m[1], 1)):
        for value in np.arange(np.ceil(lo / step_m) * step_m, hi + 1e-9, step_m):
            index = round((hi - value) * px_per_m)
            index = min(max(index, 0), picture.shape[axis] - 1)
            weight = 0.55 if abs(value / 5.0 - round(value / 5.0)) < 1e-9 else 0.25
            line = picture[index] if axis == 0 else picture[:, index]
            line[:] = (line * (1 - weight) + 255 * weight).astype(np.uint8)


def _outline_ego(picture: NDArray[np.uint8], ego: NDArray[np.bool_], scale: int) -> None:
    if not ego.any():
        return
    rows, cols = np.nonzero(ego)
    top_left = (int(cols.min()) * scale, int(rows.min()) * scale)
    bottom_right = ((int(cols.max()) + 1) * scale - 1, (int(rows.max()) + 1) * scale - 1)
    cv2.rectangle(picture, top_left, bottom_right, (255, 255, 255), 1)
    # A notch at the front edge of the footprint says which way the vehicle faces.
    centre = (top_left[0] + bottom_right[0]) // 2
    cv2.line(
        picture, (centre, top_left[1]), (centre, top_left[1] + max(4, (bottom_right[1] - top_left[1]) // 6)), (255, 255, 255), 1
    )


def _with_legend(picture: NDArray[np.uint8], coverage: Coverage) -> NDArray[np.uint8]:
    entries: list[tuple[tuple[int, int, int] | None, str]] = [
        (camera_colour(i), f"{name}  {100 * coverage.owner_share[name]:.1f}%") for i, name in enumerate(coverage.camera_names)
    ]
    entries += [
        (UNKNOWN_RGB, f"unknown  {100 * coverage.unknown_share:.1f}%"),
        (EGO_RGB, f"ego  {100 * coverage.ego_share:.1f}%"),
        (None, f"hatched: seen by 2+  {100 * coverage.overlap_share:.1f}%"),
        (None, "forward up"),
    ]
    height = max(picture.shape[0], (len(entries) + 1) * _LINE_PX + 8)
    canvas = np.full((height, picture.shape[1] + _LEGEND_WIDTH_PX, 3), 12, dtype=np.uint8)
    canvas[: picture.shape[0], : picture.shape[1]] = picture
    x0 = picture.shape[1] + 10
    for line, (colour, text) in enumerate(entries):
        y = 10 + line * _LINE_PX
        if colour is not None:
            cv2.rectangle(canvas, (x0, y), (x0 + 14, y + 14), colour, -1)
            cv2.rectangle(canvas, (x0, y), (x0 + 14, y + 14), (200, 200, 200), 1)
        cv2.putText(canvas, text, (x0 + 22, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (235, 235, 235), 1, cv2.LINE_AA)
    return canvas


MASK_STRIP_HEIGHT_PX = 120


def with_masks(canvas: NDArray[np.uint8], rig: Rig) -> NDArray[np.uint8]:
    """The coverage picture with a strip below it of each masked camera's mask (in the camera's colour:
    the pixels that see; dark: the body and the outside of the image circle) and, with the rig's body
    height, a note of it. The picture itself when no camera has a mask and the rig no body."""
    thumbs = []
    for i, cam in enumerate(rig.cameras):
        if cam.mask is None:
            continue
        h, w = cam.image_size_hw
        size = (max(1, round(w * MASK_STRIP_HEIGHT_PX / h)), MASK_STRIP_HEIGHT_PX)
        small = cv2.resize(cam.mask.astype(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
        thumb = np.full((MASK_STRIP_HEIGHT_PX + _LINE_PX, size[0], 3), 12, np.uint8)
        thumb[_LINE_PX:][small] = camera_colour(i)
        thumb[_LINE_PX:][~small] = (40, 40, 40)
        label = f"{cam.name} mask: {100 * (1 - cam.mask.mean()):.0f}% hidden"
        cv2.putText(thumb, label, (2, _LINE_PX - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
        thumbs.append(thumb)
    body = rig.ego.height_m is not None
    if not thumbs and not body:
        return canvas
    row_h = (MASK_STRIP_HEIGHT_PX + _LINE_PX) if thumbs else 0
    strip = np.full((row_h + (_LINE_PX if body else 0) + 8, canvas.shape[1], 3), 12, np.uint8)
    x = 4
    for thumb in thumbs:
        if x + thumb.shape[1] > strip.shape[1]:
            break  # as many as fit the picture's width
        strip[4 : 4 + thumb.shape[0], x : x + thumb.shape[1]] = thumb
        x += thumb.shape[1] + 8
    if body:
        note = f"body: the ego box up to {rig.ego.height_m:g} m hides the ground behind it"
        cv2.putText(strip, note, (4, row_h + _LINE_PX), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([canvas, strip])


def coverage_to_json(rig: Rig, coverage: Coverage, layout: dict[str, Any]) -> dict[str, Any]:
    """The figures of a coverage check (written beside the picture)."""
    return {
        "rig_id": rig.rig_id,
        "rig_version": rig.version,
        "rig_fingerprint": rig.fingerprint,
        **rig.grid.metadata(),
        "cameras": [
            {
                "name": name,
                "colour_rgb": list(camera_colour(i)),
                "owner_share": coverage.owner_share[name],
                "seen_share": coverage.seen_share[name],
                "masked_share": None if cam.mask is None else float(1 - cam.mask.mean()),
            }
            for i, (name, cam) in enumerate(zip(coverage.camera_names, rig.cameras, strict=True))
        ],
        "body_height_m": rig.ego.height_m,
        "unknown_share": coverage.unknown_share,
        "ego_share": coverage.ego_share,
        "overlap_share": coverage.overlap_share,
        "shares_note": "fractions of all grid cells; the owner shares, unknown_share and ego_share add up to 1",
        "table_build_ms": coverage.build_ms,
        "warnings": list(coverage.warnings),
        "picture": layout | {"unknown_rgb": list(UNKNOWN_RGB), "ego_rgb": list(EGO_RGB), "overlap_shade": OVERLAP_SHADE},
    }


def coverage_text(rig: Rig, coverage: Coverage) -> str:
    """A short human summary of a coverage check."""
    grid = rig.grid
    lines = [
        f"rig {rig.rig_id!r} version {rig.version}: {len(rig.cameras)} cameras, grid {grid.rows}x{grid.cols} cells "
        f"at {grid.cell_size_m} m (x {grid.x_range_m[0]}..{grid.x_range_m[1]} m, y {grid.y_range_m[0]}..{grid.y_range_m[1]} m)",
        "owner share: " + ", ".join(f"{n} {100 * s:.1f}%" for n, s in coverage.owner_share.items()),
        f"unknown {100 * coverage.unknown_share:.1f}%, ego {100 * coverage.ego_share:.1f}%, "
        f"seen by 2+ cameras {100 * coverage.overlap_share:.1f}%",
        f"tables built in {coverage.build_ms:.0f} ms",
    ]
    lines += [f"warning: {w}" for w in coverage.warnings]
    return "\n".join(lines)
