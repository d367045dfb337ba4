"""The procedural world: seeded determinism, class ids from the one table, layout, poses, actors."""

from __future__ import annotations

import numpy as np
import pytest

from bev_service.classes import CLASS_IDS, CLASSES
from bev_service.geometry.grid import EgoBox
from bev_service.synth import SyntheticWorld, VehiclePose, WorldConfig
from bev_service.synth.ground import MATERIAL_CLASS, Material
from bev_service.synth.world import PlacedActor, _overlaps_box

GROUND_IDS = {c.id for c in CLASSES if c.ground}


def test_same_seed_same_world_and_other_seeds_differ(world: SyntheticWorld) -> None:
    again = SyntheticWorld(seed=2)
    other = SyntheticWorld(seed=3)
    assert np.array_equal(again.ground.materials, world.ground.materials)
    assert all(np.array_equal(a, b) for a, b in zip(again.ground.colour_mips, world.ground.colour_mips, strict=True))
    assert [a.pose_at(5.0) for a in again.actors] == [a.pose_at(5.0) for a in world.actors]
    assert not np.array_equal(other.ground.materials, world.ground.materials)


def test_ground_classes_come_from_the_class_table(world: SyntheticWorld) -> None:
    assert {int(MATERIAL_CLASS[m]) for m in Material} == GROUND_IDS
    present = set(np.unique(world.ground.labels).tolist())
    assert present == GROUND_IDS, "road, markings, curbs and sidewalks, terrain all appear"
    assert np.array_equal(world.ground.labels, MATERIAL_CLASS[world.ground.materials])


def test_layout_has_curved_and_straight_roads_junctions_crosswalks_and_bays(world: SyntheticWorld) -> None:
    layout = world.layout
    kinds = {s.kind for s in world.route_sections}
    assert kinds == {"straight", "arc"}
    assert world.route.closed and world.route.length > 150
    assert len(layout.junctions) >= 2 and len(layout.crosswalks) >= 4
    assert layout.lot is not None and len(layout.lot.bays) >= 10
    sections = world.route_sections
    assert sections[0].s0_m == 0.0 and abs(sections[-1].s1_m - world.route.length) < 1e-6


def test_sampled_poses_stand_on_road_with_the_grid_inside_the_map(world: SyntheticWorld) -> None:
    rng = np.random.default_rng(0)
    limit = world.config.size_m / 2 - 10.0
    drivable = {CLASS_IDS["road"], CLASS_IDS["lane_marking"]}
    for _ in range(60):
        pose = world.sample_pose(rng)
        assert abs(pose.x_m) <= limit and abs(pose.y_m) <= limit
        assert int(world.ground.label_at(np.array([pose.x_m, pose.y_m]))) in drivable


def test_actors_are_vehicles_people_obstacles_and_background_scenery_some_moving(world: SyntheticWorld) -> None:
    classes = {a.class_id for a in world.actors}
    assert classes == {CLASS_IDS[c] for c in ("background", "vehicle", "pedestrian", "static_obstacle")}
    scenery = {a.kind for a in world.actors if a.class_id == CLASS_IDS["background"]}
    assert scenery >= {"building", "tree"} and scenery <= {"building", "tree", "hedge", "wall", "fence"}
    people = [a for a in world.actors if a.kind == "pedestrian"]
    tops = [max(p.centre[2] + p.size[0] for p in a.parts) for a in people]
    assert min(tops) >= 1.5 and max(tops) <= 1.95
    moving = [a for a in world.actors if a.motion is not None]
    assert moving and all(a.pose_at(0.0) != a.pose_at(2.0) for a in moving if a.motion and a.motion.speed_mps > 0)
    assert {a.kind for a in world.actors} >= {"car", "pedestrian", "cone", "pole"}


def test_scenery_stands_clear_of_every_road_corridor(world: SyntheticWorld) -> None:
    """Buildings, walls, hedges, fences and trees never stand on a carriageway, curb or sidewalk."""
    pieces = [a for a in world.actors if a.class_id == CLASS_IDS["background"]]
    assert len(pieces) > 20
    for piece in pieces:
        x, y, _ = piece.pose_at(0.0)
        for road in world.layout.roads:
            assert road.centre.distance(np.array([[x, y]]))[0] >= road.corridor_half_m, (piece.kind, road.name)
    under = world.ground.label_at(np.array([a.pose_at(0.0)[:2] for a in pieces]))
    assert not np.isin(under, [CLASS_IDS["road"], CLASS_IDS["lane_marking"]]).any()


def test_actors_overlapping_the_vehicle_are_left_out(world: SyntheticWorld) -> None:
    ego = EgoBox((-2.35, 2.35), (-1.0, 1.0))
    car = next(a for a in world.actors if a.kind == "car" and a.motion is None)
    x, y, yaw = car.pose_at(0.0)
    near = world.actors_near(VehiclePose(x, y, yaw), 0.0, ego, 60.0)
    assert near and all(p.actor is not car for p in near)
    distances = [np.hypot(p.x_m, p.y_m) for p in near]
    assert distances == sorted(distances) and max(distances) <= 60.0 + max(p.actor.radius_m for p in near)
    assert not _overlaps_box(PlacedActor(car, 0.0, 2.6, 0.0), ego, margin_m=0.3), "a car in the next bay stays"
    assert _overlaps_box(PlacedActor(car, 0.0, 2.0, 0.0), ego, margin_m=0.3)
    assert _overlaps_box(PlacedActor(car, 3.0, 0.0, np.pi / 2), ego, margin_m=0.3), "across the bonnet"


def test_world_config_is_checked() -> None:
    with pytest.raises(ValueError, match="size_m"):
        WorldConfig(size_m=10.0)
    with pytest.raises(ValueError, match="cell_m"):
        WorldConfig(cell_m=0.0)
    with pytest.raises(ValueError, match="seed"):
        SyntheticWorld(seed=-1)
