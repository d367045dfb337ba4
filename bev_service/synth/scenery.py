"""Scenery beside the roads: buildings and shop fronts, garden walls, hedges, fences, trees and signs.

Real surround-view and dashboard cameras see much more above the ground than the far skyline: facades a
few metres behind the sidewalk, hedges and walls along it, trees over it. None of them is a class of ours
except signs (a pole with a plate: static obstacle), so they are labelled background; they cast their
shadows over the sidewalks and the road. Each road side is filled in runs along a line a random setback
behind its sidewalk; a piece is kept only where its whole footprint stays clear of every road corridor,
the parking lot and the world's border.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bev_service.synth.layout import Layout, Road
from bev_service.synth.objects import BACKGROUND, OBSTACLE, Actor, Colour, Footprint, Primitive, _box, _colour, _moved

FloatArray = NDArray[np.float64]

_FACADES: tuple[Colour, ...] = (
    (182, 172, 156), (150, 92, 70), (210, 204, 190), (122, 118, 116), (196, 170, 120), (160, 150, 140),
    (236, 232, 222), (98, 84, 76), (170, 180, 186), (200, 140, 110),
)  # fmt: skip
_GLASS: tuple[Colour, ...] = ((48, 58, 70), (70, 84, 96), (30, 34, 40), (96, 110, 120), (120, 130, 126))
_SHOP: tuple[Colour, ...] = ((180, 30, 30), (30, 90, 160), (230, 190, 40), (40, 130, 70), (240, 240, 236), (30, 30, 34))
_WALLS: tuple[Colour, ...] = ((160, 90, 70), (176, 170, 160), (120, 116, 110), (196, 186, 160), (90, 88, 86))
_LEAVES: tuple[Colour, ...] = ((46, 78, 38), (60, 92, 40), (36, 60, 34), (86, 98, 46), (110, 100, 50))
_FENCES: tuple[Colour, ...] = ((40, 42, 44), (120, 90, 60), (190, 186, 176), (60, 80, 60))


def building(rng: np.random.Generator) -> Actor:
    """A block of frontage (local x along the street, y towards it): floors of windows over a shop front."""
    frontage, depth = float(rng.uniform(6.0, 24.0)), float(rng.uniform(6.0, 14.0))
    height = float(rng.choice([rng.uniform(3.5, 8.0), rng.uniform(8.0, 24.0)], p=[0.35, 0.65]))
    shop = _colour(rng, _SHOP) if rng.random() < 0.55 else (0.0, 0.0, 0.0)
    facade = Primitive(
        "box", (0.0, 0.0, height / 2), (frontage / 2, depth / 2, height / 2), 0.0, BACKGROUND,
        _colour(rng, _FACADES), _colour(rng, _GLASS), "shopfront" if shop != (0.0, 0.0, 0.0) else "facade",
    )  # fmt: skip
    parts = [facade]
    if shop != (0.0, 0.0, 0.0):  # an awning or a sign band over the shop windows, towards the street
        parts.append(Primitive("box", (0.0, depth / 2 + 0.4, 3.1), (frontage / 2 - 0.3, 0.45, 0.2), 0.0, BACKGROUND, shop))
    return Actor(kind="building", parts=tuple(parts), footprint=Footprint(frontage / 2, depth / 2 + 0.85))


def wall(rng: np.random.Generator, length_m: float) -> Actor:
    height, thick = float(rng.uniform(0.6, 2.4)), float(rng.uniform(0.2, 0.4))
    part = _box(-length_m / 2, length_m / 2, thick / 2, 0.0, height, class_id=BACKGROUND, colour=_colour(rng, _WALLS))
    return Actor(kind="wall", parts=(part,), footprint=Footprint(length_m / 2, thick / 2))


def hedge(rng: np.random.Generator, length_m: float) -> Actor:
    height, thick = float(rng.uniform(0.7, 2.2)), float(rng.uniform(0.5, 1.2))
    part = _box(
        -length_m / 2, length_m / 2, thick / 2, 0.0, height, class_id=BACKGROUND, colour=_colour(rng, _LEAVES), style="foliage"
    )
    return Actor(kind="hedge", parts=(part,), footprint=Footprint(length_m / 2, thick / 2))


def fence(rng: np.random.Generator, length_m: float) -> Actor:
    height = float(rng.uniform(0.9, 2.0))
    colour = _colour(rng, _FENCES)
    part = Primitive(
        "box", (0.0, 0.0, height / 2), (length_m / 2, 0.03, height / 2), 0.0, BACKGROUND, colour, (0.0, 0.0, 0.0), "fence"
    )
    return Actor(kind="fence", parts=(part,), footprint=Footprint(length_m / 2, 0.03))


def tree(rng: np.random.Generator) -> Actor:
    trunk_h, trunk_r = float(rng.uniform(1.6, 4.0)), float(rng.uniform(0.08, 0.25))
    crown = float(rng.uniform(1.2, 3.5))
    bark = (float(rng.uniform(60, 100)), float(rng.uniform(50, 75)), float(rng.uniform(40, 55)))
    parts = (
        Primitive("frustum", (0.0, 0.0, 0.0), (trunk_r, trunk_r * 0.7, trunk_h + crown * 0.5), 0.0, BACKGROUND, bark),
        Primitive(
            "sphere",
            (0.0, 0.0, trunk_h + crown * 0.8),
            (crown, 0.0, 0.0),
            0.0,
            BACKGROUND,
            _colour(rng, _LEAVES),
            style="foliage",
        ),
    )
    return Actor(kind="tree", parts=parts, footprint=Footprint(trunk_r, circle=True))


def sign(rng: np.random.Generator) -> Actor:
    """A traffic sign: a thin post and a plate (static obstacles, like the poles)."""
    post_h, r = float(rng.uniform(2.0, 3.0)), float(rng.uniform(0.03, 0.05))
    plate_w = float(rng.uniform(0.4, 0.8))
    face: Colour = tuple(float(v) for v in rng.choice([[200, 30, 30], [30, 70, 170], [240, 240, 236], [230, 190, 40]]))  # type: ignore[assignment]
    parts = (
        Primitive("frustum", (0.0, 0.0, 0.0), (r, r, post_h), 0.0, OBSTACLE, (150.0, 150.0, 155.0)),
        Primitive("box", (0.0, 0.0, post_h - plate_w / 2), (0.02, plate_w / 2, plate_w / 2), 0.0, OBSTACLE, face),
    )
    return Actor(kind="sign", parts=parts, footprint=Footprint(r, circle=True))


# --- placement -------------------------------------------------------------------------------


def scenery(layout: Layout, rng: np.random.Generator) -> list[Actor]:
    """Buildings, walls, hedges, fences and trees along both sides of every road, and signs on its sidewalks."""
    out: list[Actor] = []
    for road in layout.roads:
        for side in (-1.0, 1.0):
            out += _road_side(layout, rng, road, side)
            out += _signs(layout, rng, road, side)
    return out


def _road_side(layout: Layout, rng: np.random.Generator, road: Road, side: float) -> list[Actor]:
    """Runs of one kind of scenery (a street of buildings, a hedge, a garden wall, a row of trees, open ground)."""
    out: list[Actor] = []
    setback = float(rng.choice([rng.uniform(0.2, 1.0), rng.uniform(1.0, 8.0)]))
    s = float(rng.uniform(0.0, 10.0))
    length = road.centre.length
    while s < length - 4.0:
        kind = str(rng.choice(["buildings", "hedge", "wall", "fence", "trees", "open"], p=[0.45, 0.12, 0.1, 0.08, 0.15, 0.1]))
        run = float(rng.uniform(15.0, 60.0))
        if kind == "buildings":
            pieces = _buildings(layout, rng, road, side, s, min(s + run, length), setback)
        elif kind == "trees":
            pieces = _trees(layout, rng, road, side, s, min(s + run, length), setback)
        elif kind == "open":
            pieces = []
        else:
            pieces = _linear(layout, rng, road, side, s, min(s + run, length), setback, kind)
        out += pieces
        s += run + float(rng.uniform(1.0, 8.0))
    return out


def _buildings(
    layout: Layout, rng: np.random.Generator, road: Road, side: float, s0: float, s1: float, setback: float
) -> list[Actor]:
    out: list[Actor] = []
    s = s0
    while s < s1:
        piece = building(rng)
        half_front, half_depth = piece.footprint.half_x_m, piece.footprint.half_y_m
        centre_s = s + half_front
        placed = _place(
            layout, road, side, centre_s, road.corridor_half_m + setback + half_depth, piece, (half_front, half_depth)
        )
        if placed is not None:
            out.append(placed)
        s = centre_s + half_front + float(rng.choice([0.0, rng.uniform(0.5, 4.0)], p=[0.6, 0.4]))
    return out


def _linear(
    layout: Layout, rng: np.random.Generator, road: Road, side: float, s0: float, s1: float, setback: float, kind: str
) -> list[Actor]:
    """A hedge, wall or fence along the road in straight pieces of a few metres (roads curve)."""
    out: list[Actor] = []
    offset = road.corridor_half_m + min(setback, 1.5) + 0.4
    s = s0
    while s < s1:
        piece_len = float(min(6.0, s1 - s))
        if piece_len < 1.0:
            break
        piece = {"hedge": hedge, "wall": wall, "fence": fence}[kind](rng, piece_len)
        placed = _place(
            layout,
            road,
            side,
            s + piece_len / 2,
            offset + piece.footprint.half_y_m,
            piece,
            (piece_len / 2, piece.footprint.half_y_m),
        )
        if placed is not None:
            out.append(placed)
        s += piece_len
    return out


def _trees(
    layout: Layout, rng: np.random.Generator, road: Road, side: float, s0: float, s1: float, setback: float
) -> list[Actor]:
    out: list[Actor] = []
    spacing = float(rng.uniform(5.0, 12.0))
    for s in np.arange(s0, s1, spacing):
        piece = tree(rng)
        offset = road.corridor_half_m + float(rng.uniform(0.6, 1.5 + setback))
        placed = _place(layout, road, side, float(s), offset, piece, (0.5, 0.5))
        if placed is not None:
            out.append(placed)
    return out


def _signs(layout: Layout, rng: np.random.Generator, road: Road, side: float) -> list[Actor]:
    out: list[Actor] = []
    offset = road.carriageway_half_m + road.curb_width_m + road.verge_width_m + 0.35
    spacing = float(rng.uniform(30.0, 70.0))
    for s in np.arange(float(rng.uniform(0, spacing)), road.centre.length, spacing):
        xy, heading = road.centre.at(float(s))
        normal = np.array([-np.sin(heading), np.cos(heading)]) * side
        p = xy + normal * offset
        if _clear(layout, p[None], road, margin_m=1.0, own_corridor=False):
            out.append(_moved(sign(rng), p, float(heading) + (0.0 if side > 0 else np.pi)))
    return out


def _place(
    layout: Layout, road: Road, side: float, s: float, offset_m: float, piece: Actor, half_xy: tuple[float, float]
) -> Actor | None:
    """``piece`` at arc length ``s``, ``offset_m`` beside the centre line, its local y facing the road, or None
    where its footprint would touch a road corridor, the lot or the border."""
    s = float(np.clip(s, 0.0, road.centre.length))
    xy, heading = road.centre.at(s)
    normal = np.array([-np.sin(heading), np.cos(heading)]) * side
    centre = xy + normal * offset_m
    yaw = float(heading) + (np.pi if side > 0 else 0.0)  # local +y towards the road
    along = np.array([np.cos(yaw), np.sin(yaw)])
    across = np.array([-np.sin(yaw), np.cos(yaw)])
    hx, hy = half_xy
    corners = np.array([centre + a * hx * along + b * hy * across for a in (-1, 0, 1) for b in (-1, 0, 1)])
    if not _clear(layout, corners, road, margin_m=0.15, own_corridor=True):
        return None
    return _moved(piece, centre, yaw)


def _clear(layout: Layout, points: FloatArray, road: Road, *, margin_m: float, own_corridor: bool) -> bool:
    """Whether ``points`` (n, 2) lie outside every road corridor (``road``'s too when ``own_corridor``), outside
    the parking lot and its driveway, and inside the world."""
    if np.abs(points).max() > layout.size_m / 2 - 1.0:
        return False
    for other in layout.roads:
        if other is road and not own_corridor:
            continue
        if (other.centre.distance(points) < other.corridor_half_m + margin_m).any():
            return False
    lot = layout.lot
    if lot is not None:
        x0, y0, x1, y1 = lot.rect
        inside = (points[:, 0] > x0 - 2.0) & (points[:, 0] < x1 + 2.0) & (points[:, 1] > y0 - 2.0) & (points[:, 1] < y1 + 2.0)
        lo, hi = lot.driveway.min(axis=0) - 2.0, lot.driveway.max(axis=0) + 2.0
        drive = ((points > lo) & (points < hi)).all(axis=1)
        if (inside | drive).any():
            return False
    return True
