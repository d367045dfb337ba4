"""``SyntheticWorld``: one seeded, deterministic world (layout, ground map, actors, skyline) and the
vehicle poses in it.

Frames: the world frame has x, y on the ground and z up (metres). A ``VehiclePose`` (x, y, yaw)
places the rig's vehicle frame (ISO 8855: x forward, y left, z up, origin on the ground) in the
world; the vehicle stays level. The world never changes with the pose; actors with a ``Motion``
move with time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from bev_service.geometry.grid import EgoBox
from bev_service.geometry.transforms import apply_planar, rotation_z
from bev_service.synth import objects as obj
from bev_service.synth.ground import GroundMap, build_ground
from bev_service.synth.layout import Layout, Polyline, Section, generate_layout
from bev_service.synth.scenery import scenery

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class WorldConfig:
    """Size of the square world and cell size of its ground rasters."""

    size_m: float = 160.0
    cell_m: float = 0.05

    def __post_init__(self) -> None:
        if not 60.0 <= self.size_m <= 400.0:
            raise ValueError(f"size_m must be between 60 and 400 m, got {self.size_m}")
        if not 0.01 <= self.cell_m <= 0.2:
            raise ValueError(f"cell_m must be between 0.01 and 0.2 m, got {self.cell_m}")


@dataclass(frozen=True)
class VehiclePose:
    """The vehicle frame in the world: position of its origin and heading (yaw, counter-clockwise from world x)."""

    x_m: float
    y_m: float
    yaw_rad: float

    def world_from_vehicle_xy(self, xy: FloatArray) -> FloatArray:
        """Ground points (..., 2) from the vehicle frame to the world frame."""
        return apply_planar(rotation_z(self.yaw_rad), xy, (self.x_m, self.y_m))

    def vehicle_from_world_xy(self, xy: FloatArray) -> FloatArray:
        """Ground points (..., 2) from the world frame to the vehicle frame."""
        vehicle_from_world = rotation_z(self.yaw_rad).T
        return apply_planar(vehicle_from_world, xy - np.array([self.x_m, self.y_m]))

    def as_dict(self) -> dict[str, float]:
        return {"x_m": round(self.x_m, 6), "y_m": round(self.y_m, 6), "yaw_deg": round(float(np.rad2deg(self.yaw_rad)), 6)}


@dataclass(frozen=True)
class Skyline:
    """Buildings and tree lines on a circle around the world centre, seen beyond the ground map:
    per azimuth bin, a height (m) and a facade colour. Image class background."""

    radius_m: float
    heights_m: NDArray[np.float32]  # (bins,)
    colours: NDArray[np.float32]  # (bins, 3)
    trees: NDArray[np.bool_]  # (bins,)


@dataclass(frozen=True)
class PlacedActor:
    """An actor at one moment, in the vehicle frame."""

    actor: obj.Actor
    x_m: float
    y_m: float
    yaw_rad: float

    @property
    def primitives(self) -> list[obj.Primitive]:
        return [obj.place(p, self.x_m, self.y_m, self.yaw_rad) for p in self.actor.parts]


class SyntheticWorld:
    """A procedural world built from ``seed``: the same seed gives the same world, byte for byte."""

    def __init__(self, seed: int, config: WorldConfig | None = None) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.config = config or WorldConfig()
        layout_rng, ground_rng, actor_rng, style_rng, scenery_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence([self.seed, 3]).spawn(5)
        )
        self.layout: Layout = generate_layout(layout_rng, self.config.size_m)
        self.ground: GroundMap = build_ground(self.layout, ground_rng, self.config.cell_m)
        self.actors: tuple[obj.Actor, ...] = tuple(
            obj.roadside_actors(self.layout, actor_rng)
            + obj.lot_actors(self.layout, actor_rng)
            + obj.pedestrians(self.layout, actor_rng)
            + obj.traffic(self.layout, actor_rng)
            + scenery(self.layout, scenery_rng)
        )
        self.skyline = _skyline(style_rng, self.config.size_m)
        self.ego_colour: obj.Colour = obj._colour(style_rng, obj._PAINTS)

    # --- routes and poses ----------------------------------------------------------------------

    @cached_property
    def route(self) -> Polyline:
        """The lane drives follow: the ring road's lane in its own direction (closed, endless)."""
        return self.layout.road(self.layout.loop_name).lane(1)

    @cached_property
    def route_sections(self) -> tuple[Section, ...]:
        """The ring's straight and arc sections, in arc length along ``route``."""
        road = self.layout.road(self.layout.loop_name)
        ring = road.centre
        out = []
        for sec in road.sections:
            i0 = int(np.searchsorted(ring.s, sec.s0_m - 1e-9))
            i1 = int(np.searchsorted(ring.s, sec.s1_m - 1e-9))
            out.append(Section(sec.kind, float(self.route.s[i0]), float(self.route.s[min(i1, len(self.route.s) - 1)])))
        return tuple(out)

    def pose_on_route(self, s_m: float) -> VehiclePose:
        xy, heading = self.route.at(s_m)
        return VehiclePose(float(xy[0]), float(xy[1]), float(heading))

    def sample_pose(self, rng: np.random.Generator) -> VehiclePose:
        """A plausible pose: in a driving lane (most often), in a parking lot aisle, or in a bay."""
        roll = rng.random()
        lot = self.layout.lot
        if lot is not None and roll < 0.15:
            bay = lot.bays[int(rng.integers(len(lot.bays)))]
            yaw = bay.heading_rad + (np.pi if rng.random() < 0.4 else 0.0) + rng.normal(0, 0.03)
            return VehiclePose(float(bay.centre[0] + rng.normal(0, 0.1)), float(bay.centre[1] + rng.normal(0, 0.1)), float(yaw))
        if lot is not None and roll < 0.35:
            a, b = lot.aisles[int(rng.integers(len(lot.aisles)))]
            xy = a + rng.uniform(0.1, 0.9) * (b - a)
            yaw = np.arctan2(b[1] - a[1], b[0] - a[0]) + (np.pi if rng.random() < 0.5 else 0.0) + rng.normal(0, 0.05)
            return VehiclePose(float(xy[0]), float(xy[1] + rng.normal(0, 0.3)), float(yaw))
        return self._lane_pose(rng)

    def _lane_pose(self, rng: np.random.Generator) -> VehiclePose:
        limit = self.config.size_m / 2 - 16.0  # keep the BEV grid inside the ground map
        for _ in range(100):
            road = self.layout.roads[int(rng.integers(len(self.layout.roads)))]
            lane = road.lane(int(rng.choice([1, -1])))
            xy, heading = lane.at(float(rng.uniform(0, lane.length)))
            if np.abs(xy).max() <= limit:
                lateral = rng.normal(0, 0.2) * np.array([-np.sin(heading), np.cos(heading)])
                return VehiclePose(float(xy[0] + lateral[0]), float(xy[1] + lateral[1]), float(heading + rng.normal(0, 0.04)))
        return self.pose_on_route(0.0)

    # --- actors at one moment ------------------------------------------------------------------

    def actors_near(self, pose: VehiclePose, time_s: float, ego: EgoBox, radius_m: float) -> list[PlacedActor]:
        """Actors within ``radius_m`` of the vehicle at ``time_s``, in the vehicle frame, nearest first;
        any that would overlap the vehicle (with 0.3 m to spare) are left out."""
        out: list[tuple[float, PlacedActor]] = []
        for actor in self.actors:
            x, y, yaw = actor.pose_at(time_s)
            local = pose.vehicle_from_world_xy(np.array([x, y]))
            distance = float(np.hypot(*local))
            if distance > radius_m + actor.radius_m:
                continue
            placed = PlacedActor(actor, float(local[0]), float(local[1]), float(yaw - pose.yaw_rad))
            if not _overlaps_box(placed, ego, margin_m=0.3):
                out.append((distance, placed))
        out.sort(key=lambda item: item[0])
        return [p for _, p in out]


def _overlaps_box(placed: PlacedActor, box: EgoBox, margin_m: float) -> bool:
    """Whether the actor's footprint comes within ``margin_m`` of an axis-aligned box (separating axes)."""
    f = placed.actor.footprint
    (x0, x1), (y0, y1) = box.x_range_m, box.y_range_m
    x0, x1, y0, y1 = x0 - margin_m, x1 + margin_m, y0 - margin_m, y1 + margin_m
    if f.circle:
        nearest = np.clip([placed.x_m, placed.y_m], [x0, y0], [x1, y1])
        return bool(np.hypot(placed.x_m - nearest[0], placed.y_m - nearest[1]) < f.half_x_m)
    vehicle_from_actor = rotation_z(placed.yaw_rad)
    u, v = vehicle_from_actor[:, 0], vehicle_from_actor[:, 1]
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    own = np.array([placed.x_m, placed.y_m]) + np.array(
        [[a * f.half_x_m, b * f.half_y_m] for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
    ) @ np.stack([u, v])
    for axis in (np.array([1.0, 0.0]), np.array([0.0, 1.0]), u, v):
        a, b = corners @ axis, own @ axis
        if a.max() < b.min() or b.max() < a.min():
            return False
    return True


def _skyline(rng: np.random.Generator, size_m: float, bins: int = 1440) -> Skyline:
    """Runs of buildings (flat roofs, 6 to 40 m) and tree lines (bumpy, 7 to 16 m) around the horizon."""
    heights = np.empty(bins, dtype=np.float32)
    colours = np.empty((bins, 3), dtype=np.float32)
    trees = np.zeros(bins, dtype=bool)
    i = 0
    while i < bins:
        width = int(rng.integers(8, 48))
        j = min(bins, i + width)
        if rng.random() < 0.35:
            bumps = 7.0 + 9.0 * rng.random() + 2.5 * np.sin(np.linspace(0, rng.uniform(3, 12), j - i) + rng.uniform(0, 6))
            heights[i:j] = bumps + rng.normal(0, 0.6, size=j - i)
            colours[i:j] = np.array([45.0, 70.0, 38.0]) * rng.uniform(0.7, 1.2)
            trees[i:j] = True
        else:
            heights[i:j] = rng.uniform(6.0, 40.0)
            colours[i:j] = rng.choice(
                [[150, 140, 130], [190, 180, 160], [120, 120, 125], [170, 110, 90], [210, 205, 195]]
            ) * rng.uniform(0.8, 1.1)
        i = j
    return Skyline(radius_m=size_m / 2 + 50.0, heights_m=heights, colours=colours, trees=trees)
