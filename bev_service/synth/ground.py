"""The ground map of the synthetic world: a material raster drawn from the layout, its class labels,
and an albedo (colour) raster with procedural textures, plus a mip pyramid of the colour for
distant ground.

Materials carry the appearance (asphalt, repaired asphalt, paving, curb stone, grass, soil, paint);
each maps to exactly one class of ``bev_service.classes``, so the label of a ground point is the
class of the material raster cell that holds it (nearest cell, never interpolated). Cell (row, col)
covers x in [x0 + col s, x0 + (col + 1) s) and y in [y0 + row s, y0 + (row + 1) s); points outside
the raster take the nearest border cell, so the ground continues to the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import cv2
import numpy as np
from numpy.typing import NDArray

from bev_service.classes import CLASS_IDS
from bev_service.synth.layout import CROSSWALK_DEPTH_M, Crosswalk, Layout, Polyline, Road
from bev_service.synth.textures import albedo_raster, value_noise

FloatArray = NDArray[np.float64]
_SHIFT = 4  # cv2 drawing with 1/16-cell sub-pixel precision
MIP_LEVELS = 5


class Material(IntEnum):
    GRASS = 0
    DRY_GRASS = 1
    SOIL = 2
    GRAVEL = 3
    MULCH = 4
    ASPHALT = 5
    ASPHALT_PATCH = 6
    LOT_ASPHALT = 7
    CONCRETE = 8
    PAVERS = 9
    CURB = 10
    PAINT_WHITE = 11
    PAINT_YELLOW = 12


MATERIAL_CLASS = np.zeros(256, dtype=np.uint8)
for _m, _c in {
    Material.GRASS: "terrain",
    Material.DRY_GRASS: "terrain",
    Material.SOIL: "terrain",
    Material.GRAVEL: "terrain",
    Material.MULCH: "terrain",
    Material.ASPHALT: "road",
    Material.ASPHALT_PATCH: "road",
    Material.LOT_ASPHALT: "road",
    Material.CONCRETE: "curb_sidewalk",
    Material.PAVERS: "curb_sidewalk",
    Material.CURB: "curb_sidewalk",
    Material.PAINT_WHITE: "lane_marking",
    Material.PAINT_YELLOW: "lane_marking",
}.items():
    MATERIAL_CLASS[_m] = CLASS_IDS[_c]


@dataclass(frozen=True)
class GroundMap:
    """Rasters of the world's ground; ``colour_mips[k]`` is (h_k, w_k) uint32 packed RGBA at 2^k cells."""

    origin_xy: tuple[float, float]
    cell_m: float
    materials: NDArray[np.uint8]  # (rows, cols)
    labels: NDArray[np.uint8]  # (rows, cols)
    colour_mips: tuple[NDArray[np.uint32], ...]

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape[0], self.labels.shape[1]

    def cell_index(self, xy: FloatArray, level: int = 0) -> NDArray[np.intp]:
        """Flat index of the cell holding each point (..., 2) in mip ``level`` (clamped to the border)."""
        cell = self.cell_m * (1 << level)
        rows, cols = self.colour_mips[level].shape if level else self.shape
        col = np.clip(np.floor((xy[..., 0] - self.origin_xy[0]) / cell), 0, cols - 1).astype(np.intp)
        row = np.clip(np.floor((xy[..., 1] - self.origin_xy[1]) / cell), 0, rows - 1).astype(np.intp)
        return row * cols + col

    def label_at(self, xy: FloatArray) -> NDArray[np.uint8]:
        """Class id of the ground at world points (..., 2)."""
        return np.asarray(self.labels.reshape(-1).take(self.cell_index(np.asarray(xy, dtype=np.float64))))

    def colour_sampled(self, xy: FloatArray, level: int = 0, *, bilinear: bool = False) -> NDArray[np.uint8]:
        """Albedo (n, 3) uint8 at world points (n, 2) from mip ``level``: bilinear between cell
        centres, or the nearest cell (cv2.remap with the border repeated, as ``cell_index`` clamps)."""
        n = xy.shape[0]
        if n == 0:
            return np.zeros((0, 3), dtype=np.uint8)
        cell = self.cell_m * (1 << level)
        packed = self.colour_mips[level]
        rgba = packed.view(np.uint8).reshape(*packed.shape, 4)
        width = _REMAP_WIDTH
        rows = -(-n // width)
        maps = np.zeros((2, rows * width), dtype=np.float32)  # remap wants 2D maps of modest width
        maps[0, :n] = (xy[:, 0] - self.origin_xy[0]) / cell - 0.5
        maps[1, :n] = (xy[:, 1] - self.origin_xy[1]) / cell - 0.5
        if not bilinear:  # nearest: the cell that holds the point, exactly as cell_index picks it
            np.floor(maps + 0.5, out=maps)
        out = cv2.remap(
            rgba, maps[0].reshape(rows, width), maps[1].reshape(rows, width),
            cv2.INTER_LINEAR if bilinear else cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE,
        )  # fmt: skip
        return np.asarray(out.reshape(-1, 4)[:n, :3])


_REMAP_WIDTH = 4096


class _Canvas:
    """cv2 drawing on the material raster in world coordinates."""

    def __init__(self, size_m: float, cell_m: float, fill: int) -> None:
        n = round(size_m / cell_m)
        self.origin = np.array([-size_m / 2, -size_m / 2])
        self.cell_m = cell_m
        self.raster = np.full((n, n), fill, dtype=np.uint8)

    def _pts(self, xy: FloatArray) -> NDArray[np.int32]:
        # cv2 puts integer point k at the centre of cell k, so shift by half a cell
        cells = (np.asarray(xy) - self.origin) / self.cell_m - 0.5
        return np.round(cells * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)

    def band(self, line: Polyline | FloatArray, width_m: float, material: int, *, closed: bool = False) -> None:
        """A band of ``width_m`` centred on a polyline (round ends)."""
        points = line.vertices if isinstance(line, Polyline) else line
        thickness = max(1, round(width_m / self.cell_m))
        cv2.polylines(self.raster, [self._pts(points)], closed, int(material), thickness, cv2.LINE_8, _SHIFT)

    def polygon(self, corners: FloatArray, material: int) -> None:
        cv2.fillPoly(self.raster, [self._pts(corners)], int(material), cv2.LINE_8, _SHIFT)

    def ellipse(self, centre: FloatArray, axes_m: tuple[float, float], angle_deg: float, material: int) -> None:
        c = self._pts(centre[None])[0, 0]
        axes = (int(axes_m[0] / self.cell_m * (1 << _SHIFT)), int(axes_m[1] / self.cell_m * (1 << _SHIFT)))
        cv2.ellipse(self.raster, (int(c[0]), int(c[1])), axes, angle_deg, 0, 360, int(material), -1, cv2.LINE_8, _SHIFT)


def rectangle(centre: FloatArray, heading_rad: float, length_m: float, width_m: float) -> FloatArray:
    """(4, 2) corners of a rectangle of ``length_m`` along ``heading_rad`` and ``width_m`` across it."""
    along = np.array([np.cos(heading_rad), np.sin(heading_rad)]) * length_m / 2
    across = np.array([-np.sin(heading_rad), np.cos(heading_rad)]) * width_m / 2
    return np.array([centre - along - across, centre + along - across, centre + along + across, centre - along + across])


def draw_materials(layout: Layout, rng: np.random.Generator, cell_m: float) -> tuple[NDArray[np.uint8], FloatArray]:
    """The material raster of a layout and its origin (x0, y0)."""
    canvas = _Canvas(layout.size_m, cell_m, Material.GRASS)
    _terrain_patches(canvas, rng)
    for road in layout.roads:
        paving = Material.PAVERS if road.sidewalk_paving else Material.CONCRETE
        canvas.band(road.centre, 2 * road.corridor_half_m, paving, closed=road.centre.closed)
    for road in layout.roads:
        if road.verge_width_m > 0:
            width = 2 * (road.carriageway_half_m + road.curb_width_m + road.verge_width_m)
            canvas.band(road.centre, width, Material.GRASS, closed=road.centre.closed)
    for road in layout.roads:
        width = 2 * (road.carriageway_half_m + road.curb_width_m)
        canvas.band(road.centre, width, Material.CURB, closed=road.centre.closed)
    if layout.lot is not None:
        x0, y0, x1, y1 = layout.lot.rect
        canvas.polygon(
            np.array([[x0 - 0.25, y0 - 0.25], [x1 + 0.25, y0 - 0.25], [x1 + 0.25, y1 + 0.25], [x0 - 0.25, y1 + 0.25]]),
            Material.CURB,
        )
        canvas.polygon(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), Material.LOT_ASPHALT)
        canvas.polygon(layout.lot.driveway, Material.LOT_ASPHALT)
    for road in layout.roads:
        canvas.band(road.centre, 2 * road.carriageway_half_m, Material.ASPHALT, closed=road.centre.closed)
    _asphalt_patches(canvas, rng, layout)
    for road in layout.roads:
        _road_markings(canvas, rng, layout, road)
    for crosswalk in layout.crosswalks:
        _zebra(canvas, crosswalk)
    if layout.lot is not None:
        paint = Material.PAINT_YELLOW if layout.lot.lines_yellow else Material.PAINT_WHITE
        for a, b in layout.lot.bay_lines:
            canvas.band(np.stack([a, b]), 0.12, paint)
    return canvas.raster, canvas.origin


def _terrain_patches(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Organic patches of dry grass, soil, gravel and mulch: thresholds of smooth noise."""
    shape = canvas.raster.shape
    for material, scale_m, threshold in (
        (Material.DRY_GRASS, 9.0, 0.9),
        (Material.SOIL, 6.0, 1.4),
        (Material.GRAVEL, 4.0, 1.7),
        (Material.MULCH, 3.0, 1.8),
    ):
        patch = value_noise(rng, (shape[0], shape[1]), scale_m / canvas.cell_m) > threshold * float(rng.uniform(0.85, 1.15))
        canvas.raster[patch] = material


def _asphalt_patches(canvas: _Canvas, rng: np.random.Generator, layout: Layout) -> None:
    """Repaired rectangles of asphalt: another texture, still road."""
    for road in layout.roads:
        for _ in range(int(rng.integers(2, 8))):
            xy, heading = road.centre.at(float(rng.uniform(0, road.centre.length)))
            offset = float(rng.uniform(-road.carriageway_half_m + 1.0, road.carriageway_half_m - 1.0))
            centre = xy + offset * np.array([-np.sin(heading), np.cos(heading)])
            corners = rectangle(centre, float(heading), float(rng.uniform(1.0, 6.0)), float(rng.uniform(0.6, 2.5)))
            inside = road.centre.distance(corners) <= road.carriageway_half_m
            if inside.all():
                canvas.polygon(corners, Material.ASPHALT_PATCH)


def _junction_free(layout: Layout, road: Road, points: FloatArray) -> NDArray[np.bool_]:
    """Which marking points lie clear of other roads' corridors and of the crosswalks on this road."""
    keep = np.ones(len(points), dtype=bool)
    for other in layout.roads:
        if other is not road:
            keep &= other.centre.distance(points) > other.corridor_half_m + 0.5 + CROSSWALK_DEPTH_M + 1.0
    return keep


def _runs(points: FloatArray, keep: NDArray[np.bool_]) -> list[FloatArray]:
    """Consecutive runs of kept points, as separate polylines of at least two points."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    return [points[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= 2]


def _marking_line(
    canvas: _Canvas, layout: Layout, road: Road, line: Polyline, width_m: float, paint: int, dash: tuple[float, float] | None
) -> None:
    points = line.between(0.0, line.length)
    s = np.linspace(0.0, line.length, len(points))
    keep = _junction_free(layout, road, points)
    if dash is not None:
        keep &= np.mod(s, dash[0] + dash[1]) < dash[0]
    for run in _runs(points, keep):
        canvas.band(run, width_m, paint)


def _road_markings(canvas: _Canvas, rng: np.random.Generator, layout: Layout, road: Road) -> None:
    white = Material.PAINT_WHITE
    centre_paint = Material.PAINT_YELLOW if road.centre_line_yellow else white
    closed_centre = Polyline(road.centre.vertices, closed=False) if road.centre.closed else road.centre
    if road.centre_line == "double":
        for side in (-0.12, 0.12):
            _marking_line(canvas, layout, road, closed_centre.offset(side), 0.12, centre_paint, None)
    else:
        dash = (3.0, float(rng.choice([3.0, 6.0]))) if road.centre_line == "dashed" else None
        _marking_line(canvas, layout, road, closed_centre, 0.12, centre_paint, dash)
    edge_dash = (1.0, 1.0) if rng.random() < 0.3 else None
    for side in (-1.0, 1.0):
        offset = side * (road.lane_width_m if road.parking_width_m > 0 else road.carriageway_half_m - 0.35)
        _marking_line(canvas, layout, road, closed_centre.offset(offset), 0.1, white, edge_dash)


def _zebra(canvas: _Canvas, crosswalk: Crosswalk) -> None:
    """Stripes 0.5 m wide, 0.5 m apart, along the road, across its carriageway, and a stop line
    across the lane that approaches the junction, before the crossing."""
    heading = crosswalk.road_heading_rad
    across = np.array([-np.sin(heading), np.cos(heading)])
    away = np.array([np.cos(heading), np.sin(heading)])
    n = int((crosswalk.width_m - 0.4) // 1.0)
    first = -(n - 1) / 2 * 1.0
    for k in range(n):
        centre = crosswalk.centre + across * (first + k)
        canvas.polygon(rectangle(centre, heading, crosswalk.depth_m, 0.5), Material.PAINT_WHITE)
    # traffic towards the junction drives against `away`, in the lane on the left of `away`
    centre = crosswalk.centre + away * (crosswalk.depth_m / 2 + 0.8) + across * crosswalk.width_m / 4
    canvas.polygon(rectangle(centre, heading, 0.3, crosswalk.width_m / 2 - 0.2), Material.PAINT_WHITE)


def build_ground(layout: Layout, rng: np.random.Generator, cell_m: float) -> GroundMap:
    """Material raster, labels and textured colour (with mips) of a layout."""
    materials, origin = draw_materials(layout, rng, cell_m)
    labels = MATERIAL_CLASS[materials]
    albedo = albedo_raster(materials, rng, cell_m, origin)  # (rows, cols, 3) uint8
    mips = [_pack(albedo)]
    level = albedo
    for _ in range(1, MIP_LEVELS):
        level = np.asarray(
            cv2.resize(level, (level.shape[1] // 2, level.shape[0] // 2), interpolation=cv2.INTER_AREA), dtype=np.uint8
        )
        mips.append(_pack(level))
    return GroundMap(
        origin_xy=(float(origin[0]), float(origin[1])), cell_m=cell_m, materials=materials, labels=labels, colour_mips=tuple(mips)
    )


def _pack(rgb: NDArray[np.uint8]) -> NDArray[np.uint32]:
    """(h, w, 3) uint8 to (h, w) uint32 RGBA, so one gather fetches a whole colour."""
    rgba = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA))
    return rgba.view(np.uint32)[..., 0]
