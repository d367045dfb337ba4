"""Things that stand on the ground: vehicles, pedestrians and static obstacles, built from a few 3D
primitives each (boxes, vertical cylinders and cones, spheres), parked, standing or moving along
paths of the layout.

An ``Actor`` is one object with a local frame (x forward, y left, z up, origin on the ground at its
centre); its ``parts`` are primitives in that frame and its ``footprint`` is what the true BEV marks.
``Primitive`` values are also what the renderer intersects, once placed in the world (or vehicle)
frame by ``place``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from bev_service.classes import CLASS_IDS
from bev_service.geometry.transforms import apply_planar, rotation_z
from bev_service.synth.layout import Layout, Polyline, Road

FloatArray = NDArray[np.float64]
Colour = tuple[float, float, float]

VEHICLE = CLASS_IDS["vehicle"]
PEDESTRIAN = CLASS_IDS["pedestrian"]
OBSTACLE = CLASS_IDS["static_obstacle"]
BACKGROUND = CLASS_IDS["background"]

_PAINTS: tuple[Colour, ...] = (
    (200, 200, 205), (30, 32, 36), (150, 20, 25), (25, 50, 120), (120, 125, 130), (235, 235, 230),
    (60, 90, 60), (180, 150, 40), (90, 30, 60), (40, 110, 160), (170, 90, 30), (70, 70, 75),
)  # fmt: skip
_CLOTHES: tuple[Colour, ...] = (
    (30, 30, 40), (200, 40, 40), (40, 60, 140), (220, 220, 210), (90, 110, 60), (180, 160, 60),
    (120, 70, 40), (60, 60, 60), (200, 120, 160), (40, 140, 150),
)  # fmt: skip
_SKIN: tuple[Colour, ...] = ((235, 200, 170), (200, 150, 110), (150, 100, 70), (100, 70, 50))


@dataclass(frozen=True)
class Primitive:
    """One 3D shape. ``shape``: "box" (``centre`` = box centre, ``size`` = half extents along its
    local x, y, z), "frustum" (a vertical cylinder or cone: ``centre`` = centre of its base,
    ``size`` = (base radius, top radius, height)) or "sphere" (``size`` = (radius, 0, 0)).
    ``style`` chooses how its surface is coloured (see ``render.surface_albedo``)."""

    shape: str
    centre: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw_rad: float
    class_id: int
    colour: Colour
    colour2: Colour = (0.0, 0.0, 0.0)
    style: str = "plain"

    def bounding_sphere(self) -> tuple[FloatArray, float]:
        """Centre and radius of a sphere that holds the primitive."""
        c = np.asarray(self.centre, dtype=np.float64)
        if self.shape == "box":
            return c, float(np.linalg.norm(self.size))
        if self.shape == "frustum":
            r, h = max(self.size[0], self.size[1]), self.size[2]
            return c + np.array([0.0, 0.0, h / 2]), float(np.hypot(r, h / 2))
        return c, float(self.size[0])


def place(part: Primitive, x_m: float, y_m: float, yaw_rad: float) -> Primitive:
    """The part of an actor in the frame where the actor stands at (x_m, y_m) facing yaw_rad."""
    x, y = apply_planar(rotation_z(yaw_rad), part.centre[:2], (x_m, y_m))
    return replace(part, centre=(x, y, part.centre[2]), yaw_rad=part.yaw_rad + yaw_rad)


@dataclass(frozen=True)
class Motion:
    """Travel along ``path`` at ``speed_mps`` from arc length ``s0_m``; open paths are walked back
    and forth when ``back_and_forth``, else restarted from their beginning."""

    path: Polyline
    s0_m: float
    speed_mps: float
    back_and_forth: bool = False

    def pose_at(self, time_s: float) -> tuple[float, float, float]:
        length = self.path.length
        s = self.s0_m + self.speed_mps * time_s
        backwards = False
        if self.back_and_forth and not self.path.closed:
            s = float(np.mod(s, 2 * length))
            backwards = s > length
            s = 2 * length - s if backwards else s
        else:
            s = float(np.mod(s, length))
        xy, heading = self.path.at(s)
        return float(xy[0]), float(xy[1]), float(heading) + (np.pi if backwards else 0.0)


@dataclass(frozen=True)
class Footprint:
    """What an actor covers on the ground, in its frame: a rectangle (half_x, half_y) or a circle (radius)."""

    half_x_m: float
    half_y_m: float = 0.0
    circle: bool = False


@dataclass(frozen=True)
class Actor:
    kind: str
    parts: tuple[Primitive, ...]
    footprint: Footprint
    x_m: float = 0.0
    y_m: float = 0.0
    yaw_rad: float = 0.0
    motion: Motion | None = None

    @property
    def class_id(self) -> int:
        return self.parts[0].class_id

    @property
    def radius_m(self) -> float:
        """Radius of a circle on the ground around the actor's origin that holds its footprint."""
        f = self.footprint
        return f.half_x_m if f.circle else float(np.hypot(f.half_x_m, f.half_y_m))

    def pose_at(self, time_s: float) -> tuple[float, float, float]:
        return self.motion.pose_at(time_s) if self.motion is not None else (self.x_m, self.y_m, self.yaw_rad)


# --- actor builders --------------------------------------------------------------------------


def _colour(rng: np.random.Generator, palette: tuple[Colour, ...]) -> Colour:
    base = np.array(palette[int(rng.integers(len(palette)))]) * rng.uniform(0.85, 1.1)
    r, g, b = np.clip(base, 0, 255)
    return float(r), float(g), float(b)


def _box(x0: float, x1: float, y: float, z0: float, z1: float, **kw: object) -> Primitive:
    return Primitive("box", ((x0 + x1) / 2, 0.0, (z0 + z1) / 2), ((x1 - x0) / 2, y, (z1 - z0) / 2), 0.0, **kw)  # type: ignore[arg-type]


def vehicle(rng: np.random.Generator, kind: str | None = None) -> Actor:
    """A car, SUV or van: a dark underbody (wheels), a painted body, a glass cabin with a painted roof."""
    kind = kind or str(rng.choice(["car", "suv", "van"], p=[0.6, 0.25, 0.15]))
    length, width, height = {
        "car": (rng.uniform(4.0, 4.9), rng.uniform(1.7, 1.88), rng.uniform(1.38, 1.55)),
        "suv": (rng.uniform(4.4, 4.95), rng.uniform(1.8, 1.98), rng.uniform(1.62, 1.85)),
        "van": (rng.uniform(4.8, 5.6), rng.uniform(1.9, 2.1), rng.uniform(1.9, 2.4)),
    }[kind]
    paint = _colour(rng, _PAINTS)
    half_l, half_w = length / 2, width / 2
    belt = height * (0.5 if kind == "van" else 0.58)
    cabin = (-half_l + 0.1, half_l * 0.55) if kind == "van" else (-half_l * 0.7, half_l * 0.3)
    parts = (
        _box(-half_l + 0.35, half_l - 0.35, half_w - 0.05, 0.0, 0.32, class_id=VEHICLE, colour=(22.0, 22.0, 25.0), style="plain"),
        _box(-half_l, half_l, half_w, 0.3, belt, class_id=VEHICLE, colour=paint, style="car_body"),
        _box(*cabin, half_w - 0.08, belt, height, class_id=VEHICLE, colour=paint, colour2=(40.0, 48.0, 58.0), style="car_cabin"),
    )
    return Actor(kind=kind, parts=parts, footprint=Footprint(half_l, half_w))


def pedestrian(rng: np.random.Generator) -> Actor:
    """An upright person: a tapered body (legs and torso) and a head, 1.55 to 1.9 m tall."""
    height = float(rng.uniform(1.55, 1.9))
    body_h = height - 0.23
    r_base, r_top = float(rng.uniform(0.16, 0.21)), float(rng.uniform(0.19, 0.25))
    trousers, shirt = _colour(rng, _CLOTHES), _colour(rng, _CLOTHES)
    parts = (
        Primitive("frustum", (0.0, 0.0, 0.0), (r_base, r_top, body_h), 0.0, PEDESTRIAN, shirt, trousers, "person"),
        Primitive("sphere", (0.0, 0.0, height - 0.115), (0.115, 0.0, 0.0), 0.0, PEDESTRIAN, _colour(rng, _SKIN)),
    )
    return Actor(kind="pedestrian", parts=parts, footprint=Footprint(max(r_base, r_top), circle=True))


def cone(rng: np.random.Generator) -> Actor:
    r, h = float(rng.uniform(0.15, 0.2)), float(rng.uniform(0.5, 0.75))
    part = Primitive("frustum", (0.0, 0.0, 0.0), (r, 0.035, h), 0.0, OBSTACLE, (240.0, 90.0, 20.0), (235.0, 235.0, 235.0), "cone")
    return Actor(kind="cone", parts=(part,), footprint=Footprint(r, circle=True))


def pole(rng: np.random.Generator) -> Actor:
    r, h = float(rng.uniform(0.05, 0.1)), float(rng.uniform(3.0, 6.0))
    grey = float(rng.uniform(70, 150))
    part = Primitive("frustum", (0.0, 0.0, 0.0), (r, r * 0.8, h), 0.0, OBSTACLE, (grey, grey, grey * 1.05))
    return Actor(kind="pole", parts=(part,), footprint=Footprint(r, circle=True))


def bollard(rng: np.random.Generator) -> Actor:
    r, h = float(rng.uniform(0.07, 0.11)), float(rng.uniform(0.7, 1.0))
    colour = (60.0, 60.0, 62.0) if rng.random() < 0.6 else (220.0, 180.0, 30.0)
    part = Primitive("frustum", (0.0, 0.0, 0.0), (r, r, h), 0.0, OBSTACLE, colour)
    return Actor(kind="bollard", parts=(part,), footprint=Footprint(r, circle=True))


def barrier(rng: np.random.Generator) -> Actor:
    """A striped road-works barrier or a concrete block."""
    length, depth = float(rng.uniform(1.5, 2.6)), float(rng.uniform(0.2, 0.5))
    striped = bool(rng.random() < 0.6)
    height = float(rng.uniform(0.8, 1.1)) if striped else float(rng.uniform(0.6, 0.85))
    colour: Colour = (220.0, 30.0, 30.0) if striped else (165.0, 162.0, 155.0)
    part = _box(-length / 2, length / 2, depth / 2, 0.0, height, class_id=OBSTACLE, colour=colour,
                colour2=(240.0, 240.0, 240.0), style="striped" if striped else "plain")  # fmt: skip
    return Actor(kind="barrier", parts=(part,), footprint=Footprint(length / 2, depth / 2))


def ego_body(x_range_m: tuple[float, float], y_range_m: tuple[float, float], colour: Colour) -> tuple[Primitive, ...]:
    """The rig's own car as seen by its cameras (image class background; the BEV marks it ego)."""
    cx = (x_range_m[0] + x_range_m[1]) / 2
    hx, hy = (x_range_m[1] - x_range_m[0]) / 2, (y_range_m[1] - y_range_m[0]) / 2
    cy = (y_range_m[0] + y_range_m[1]) / 2
    return (
        Primitive("box", (cx, cy, 0.2), (hx - 0.3, hy - 0.05, 0.2), 0.0, BACKGROUND, (22.0, 22.0, 25.0)),
        Primitive("box", (cx, cy, 0.7), (hx, hy, 0.35), 0.0, BACKGROUND, colour, style="car_body"),
        Primitive(
            "box",
            (cx - 0.25 * hx, cy, 1.2),
            (0.55 * hx, hy - 0.12, 0.25),
            0.0,
            BACKGROUND,
            colour,
            (40.0, 48.0, 58.0),
            "car_cabin",
        ),
    )


# --- placement -------------------------------------------------------------------------------


def _moved(actor: Actor, xy: FloatArray | tuple[float, float], yaw: float, motion: Motion | None = None) -> Actor:
    """The actor standing at ``xy`` facing ``yaw`` (or following ``motion``)."""
    return replace(actor, x_m=float(xy[0]), y_m=float(xy[1]), yaw_rad=float(yaw), motion=motion)


def _junction_clear(layout: Layout, road: Road, xy: FloatArray, margin_m: float) -> bool:
    """True when ``xy`` is clear of other roads' corridors (and their crosswalks) by ``margin_m``."""
    for other in layout.roads:
        if other is not road and other.centre.distance(xy[None])[0] < other.corridor_half_m + margin_m:
            return False
    return True


def _clear_of_driveway(layout: Layout, xy: FloatArray, margin_m: float) -> bool:
    if layout.lot is None:
        return True
    centre = layout.lot.driveway.mean(axis=0)
    return bool(np.linalg.norm(xy - centre) > margin_m + np.linalg.norm(layout.lot.driveway[0] - centre))


def roadside_actors(layout: Layout, rng: np.random.Generator) -> list[Actor]:
    """Parked cars, cone rows and barriers in the parking lanes; poles and bollards on sidewalks."""
    out: list[Actor] = []
    for road in layout.roads:
        if road.parking_width_m > 0:
            for side in (-1.0, 1.0):
                out += _parking_lane(layout, rng, road, side)
        out += _sidewalk_furniture(layout, rng, road)
    return out


def _parking_lane(layout: Layout, rng: np.random.Generator, road: Road, side: float) -> list[Actor]:
    line = road.centre.offset(side * (road.lane_width_m + road.parking_width_m / 2))
    occupancy = float(rng.uniform(0.25, 0.85))
    out: list[Actor] = []
    s = float(rng.uniform(0, 6))
    while s < line.length - 6:
        xy, heading = line.at(s + 3.0)
        yaw = float(heading) + (0.0 if side < 0 else np.pi)
        ok = _junction_clear(layout, road, xy, 6.5) and _clear_of_driveway(layout, xy, 4.0)
        roll = rng.random()
        if ok and roll < 0.06:  # a row of cones, or a barrier, in place of a car
            group = [cone(rng) for _ in range(int(rng.integers(3, 6)))]
            for k, c in enumerate(group):
                p, _ = line.at(s + 0.8 + 1.6 * k)
                out.append(_moved(c, p, 0.0))
            s += 1.6 * len(group) + 1.0
            continue
        if ok and roll < 0.1:
            b = barrier(rng)
            out.append(_moved(b, xy, float(heading)))
            s += 2 * b.footprint.half_x_m + 1.0
            continue
        car = vehicle(rng, "van" if rng.random() < 0.1 else "car")
        if ok and rng.random() < occupancy:
            p, h = line.at(s + car.footprint.half_x_m)
            lateral = float(rng.uniform(-0.15, 0.15))
            p = p + lateral * np.array([-np.sin(h), np.cos(h)])
            out.append(_moved(car, p, yaw + rng.normal(0, 0.02)))
        s += 2 * car.footprint.half_x_m + float(rng.uniform(0.6, 2.5))
    return out


def _sidewalk_furniture(layout: Layout, rng: np.random.Generator, road: Road) -> list[Actor]:
    out: list[Actor] = []
    curb_side = road.carriageway_half_m + road.curb_width_m + road.verge_width_m + 0.45
    for side in (-1.0, 1.0):
        line = road.centre.offset(side * curb_side)
        spacing = float(rng.uniform(18.0, 32.0))
        for s in np.arange(float(rng.uniform(0, spacing)), line.length, spacing):
            xy, _ = line.at(s)
            if _junction_clear(layout, road, xy, 1.0) and _clear_of_driveway(layout, xy, 1.0):
                out.append(_moved(pole(rng), xy, 0.0))
        if rng.random() < 0.35:  # a short row of bollards
            s0 = float(rng.uniform(0, line.length - 10))
            for k in range(int(rng.integers(3, 7))):
                xy, _ = line.at(s0 + 1.5 * k + 0.75)
                if _junction_clear(layout, road, xy, 1.0) and _clear_of_driveway(layout, xy, 1.0):
                    out.append(_moved(bollard(rng), xy, 0.0))
    return out


def lot_actors(layout: Layout, rng: np.random.Generator) -> list[Actor]:
    """Cars in the bays (nose in or reversed in), a few cones and people in the lot."""
    lot = layout.lot
    if lot is None:
        return []
    out: list[Actor] = []
    occupancy = float(rng.uniform(0.3, 0.85))
    for bay in lot.bays:
        if rng.random() < occupancy:
            yaw = bay.heading_rad + (np.pi if rng.random() < 0.3 else 0.0) + rng.normal(0, 0.03)
            jitter = rng.normal(0, 0.12, size=2)
            out.append(_moved(vehicle(rng), bay.centre + jitter, yaw))
    x0, y0, x1, y1 = lot.rect
    for _ in range(int(rng.integers(0, 4))):
        corner = np.array([rng.choice([x0 + 1.0, x1 - 1.0]), rng.uniform(y0 + 1, y1 - 1)])
        out.append(_moved(cone(rng), corner, 0.0))
    for a, b in lot.aisles:
        if rng.random() < 0.5:
            path = Polyline(np.stack([a, b]))
            walk = Motion(path, float(rng.uniform(0, path.length)), float(rng.uniform(0.7, 1.4)), back_and_forth=True)
            out.append(_moved(pedestrian(rng), (0.0, 0.0), 0.0, walk))
    return out


def pedestrians(layout: Layout, rng: np.random.Generator) -> list[Actor]:
    """People standing or walking on sidewalks, and walking over crosswalks."""
    out: list[Actor] = []
    for _ in range(int(rng.integers(10, 24))):
        road = layout.roads[int(rng.integers(len(layout.roads)))]
        side = float(rng.choice([-1.0, 1.0]))
        offset = road.sidewalk_offset_m + float(rng.uniform(-0.35, 0.35)) * road.sidewalk_width_m
        line = road.centre.offset(side * offset)
        s0 = float(rng.uniform(0, line.length - 40))
        if rng.random() < 0.6:
            path = Polyline(line.between(s0, s0 + float(rng.uniform(10, 40)), step_m=1.0))
            out.append(_moved(pedestrian(rng), (0.0, 0.0), 0.0, Motion(path, 0.0, float(rng.uniform(0.8, 1.6)), True)))
        else:
            xy, heading = line.at(s0)
            out.append(_moved(pedestrian(rng), xy, float(heading)))
    for crosswalk in layout.crosswalks:
        if rng.random() < 0.45:
            h = crosswalk.road_heading_rad
            across = np.array([-np.sin(h), np.cos(h)]) * (crosswalk.width_m / 2 + 1.0)
            lane = rng.uniform(-0.8, 0.8) * np.array([np.cos(h), np.sin(h)])
            path = Polyline(np.stack([crosswalk.centre - across + lane, crosswalk.centre + across + lane]))
            walk = Motion(path, float(rng.uniform(0, 2 * path.length)), float(rng.uniform(0.9, 1.5)), back_and_forth=True)
            out.append(_moved(pedestrian(rng), (0.0, 0.0), 0.0, walk))
    return out


def traffic(layout: Layout, rng: np.random.Generator) -> list[Actor]:
    """Moving cars: against the ring's direction on the ring (its other lane is the one drives
    follow), both ways on the other streets."""
    out: list[Actor] = []
    for road in layout.roads:
        directions = (-1,) if road.name == layout.loop_name else (1, -1)
        for direction in directions:
            lane = road.lane(direction)
            count = int(rng.integers(1, 4))
            gap = lane.length / count
            starts = np.arange(count) * gap + rng.uniform(0, max(gap - 8.0, 0.0), size=count)
            speed = float(rng.uniform(4.0, 11.0))  # one speed per lane keeps the cars apart
            for s0 in starts:
                out.append(_moved(vehicle(rng), (0.0, 0.0), 0.0, Motion(lane, float(s0), speed)))
    return out
