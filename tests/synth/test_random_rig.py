"""Randomized rigs: deterministic per seed, cars and mounts within their ranges, cameras outside the body,
image sizes and lenses as drawn, and every family rendered by the synthetic renderer with its body seen."""

from __future__ import annotations

import numpy as np
import pytest

from bev_service.calib.rigfile import rig_from_yaml, rig_to_yaml
from bev_service.classes import CLASSES, NUM_CLASSES
from bev_service.geometry.cameras import FisheyeCamera, MeiCamera, OcamCamera, PinholeCamera
from bev_service.geometry.rig import Rig
from bev_service.synth import Renderer, SyntheticWorld
from bev_service.synth import objects as obj
from bev_service.synth.random_rig import ASPECTS_WH, FAMILIES, image_size_hw, random_rig
from bev_service.synth.raycast import primitive_from_parent
from bev_service.synth.rays import ego_parts
from bev_service.synth.render import RenderedFrameSet

GROUND_IDS = np.array([c.id for c in CLASSES if c.ground])
MODEL_TYPES = {"fisheye": FisheyeCamera, "mei": MeiCamera, "ocam": OcamCamera, "pinhole": PinholeCamera}
SEEDS = range(24)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def small_rig(seed: int, *, family: str | None = None, cameras: str = "surround") -> Rig:
    """A rig of 160 x 120 pixel images (or so): it renders in a fraction of a second."""
    return random_rig(rng(seed), family=family, cameras=cameras, pixels=160 * 120, min_size_hw=(64, 64))


def inside_part(part: obj.Primitive, point: np.ndarray) -> bool:
    return bool((np.abs(primitive_from_parent(part, point)) < np.asarray(part.size)).all())


def full_body(rig: Rig) -> tuple[obj.Primitive, ...]:
    return obj.ego_body(rig.ego.x_range_m, rig.ego.y_range_m, (128.0, 128.0, 128.0))


def horizontal_fov_deg(model: PinholeCamera) -> float:
    w = model.image_size_hw[1]
    cy = model.intrinsics.cy
    rays, valid = model.unproject(np.array([[-0.5, cy], [w - 0.5, cy]]))
    assert valid.all()
    return float(np.rad2deg(np.arccos(np.clip(rays[0] @ rays[1], -1.0, 1.0))))


# --- determinism and validity ------------------------------------------------------------------


@pytest.mark.parametrize("cameras", ["surround", "front_pinhole"])
def test_same_seed_gives_the_same_rig(cameras: str) -> None:
    a, b = random_rig(rng(7), cameras=cameras), random_rig(rng(7), cameras=cameras)
    assert a == b
    assert a.fingerprint == b.fingerprint
    assert rig_to_yaml(a) == rig_to_yaml(b)


def test_seeds_give_different_rigs() -> None:
    rigs = [random_rig(rng(seed)) for seed in range(12)]
    assert len({r.fingerprint for r in rigs}) == len(rigs)
    assert len({r.rig_id for r in rigs}) == len(rigs)
    assert len({r.ego for r in rigs}) == len(rigs)
    assert len({type(r.cameras[0].model) for r in rigs}) >= 3


@pytest.mark.parametrize("cameras", ["surround", "front_pinhole"])
def test_rigs_survive_the_rig_file_round_trip(cameras: str) -> None:
    for seed in range(4):
        rig = random_rig(rng(seed), cameras=cameras)
        assert rig.source_text, "built through the rig file's own checks"
        again = rig_from_yaml(rig_to_yaml(rig))
        assert again.fingerprint == rig.fingerprint


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="cameras must be one of"):
        random_rig(rng(0), cameras="roof")
    with pytest.raises(ValueError, match="family must be one of"):
        random_rig(rng(0), family="orthographic")
    with pytest.raises(ValueError, match="one pinhole camera"):
        random_rig(rng(0), cameras="front_pinhole", family="mei")
    with pytest.raises(ValueError, match="must be positive"):
        random_rig(rng(0), pixels=0)


# --- the car and the mounts --------------------------------------------------------------------


def test_car_sizes_within_their_ranges_about_the_footprint_centre() -> None:
    for seed in SEEDS:
        ego = random_rig(rng(seed)).ego
        (x0, x1), (y0, y1) = ego.x_range_m, ego.y_range_m
        assert 3.8 <= x1 - x0 <= 5.3 and 1.65 <= y1 - y0 <= 2.05
        assert x0 == -x1 and y0 == -y1
        assert ego.height_m is not None and 1.35 <= ego.height_m <= 1.9


def test_surround_cameras_sit_outside_the_body_box_where_rigs_mount_them() -> None:
    for seed in SEEDS:
        rig = random_rig(rng(seed))
        assert rig.camera_names == ("front", "left", "rear", "right")
        (x0, x1), (y0, y1) = rig.ego.x_range_m, rig.ego.y_range_m
        front, left, rear, right = (rig.camera(n).centre for n in rig.camera_names)
        assert 0.02 <= front[0] - x1 <= 0.15 and 0.4 <= front[2] <= 1.0
        assert 0.02 <= x0 - rear[0] <= 0.15 and 0.5 <= rear[2] <= 1.2
        assert 0.05 <= left[1] - y1 <= 0.25 and 0.05 <= y0 - right[1] <= 0.25
        for side in (left, right):
            assert 0.8 <= side[2] <= 1.2 and 0.0 < side[0] < x1
        for cam in rig.cameras:
            assert not rig.ego.contains(cam.centre[:2])
            assert not any(inside_part(p, cam.centre) for p in full_body(rig))
        assert ego_parts(rig) == full_body(rig), "the whole body is rendered"


def test_surround_cameras_look_where_their_names_say() -> None:
    for seed in SEEDS:
        rig = random_rig(rng(seed))
        for cam in rig.cameras:
            assert cam.vehicle_from_camera is not None
            axis = cam.vehicle_from_camera[:3, 2]  # the optical axis in the vehicle frame
            pitch_down = float(np.rad2deg(np.arcsin(-axis[2])))
            outward = {"front": axis[0], "rear": -axis[0], "left": axis[1], "right": -axis[1]}[cam.name]
            assert outward > 0.2
            low, high = {"front": (5, 40), "rear": (10, 40), "left": (20, 75), "right": (20, 75)}[cam.name]
            assert low - 0.5 <= pitch_down <= high + 0.5


def test_dashboard_camera_above_the_hood_ahead_of_the_cabin() -> None:
    for seed in SEEDS:
        rig = random_rig(rng(seed), cameras="front_pinhole")
        assert rig.camera_names == ("front",)
        cam = rig.camera("front")
        assert isinstance(cam.model, PinholeCamera)
        assert 59.5 <= horizontal_fov_deg(cam.model) <= 120.5
        assert 1.1 <= cam.centre[2] <= 1.6
        assert not any(inside_part(p, cam.centre) for p in full_body(rig))
        assert rig.ego.height_m is not None and rig.ego.height_m < cam.centre[2], "the camera looks over the hood"
        assert cam.vehicle_from_camera is not None
        pitch_down = float(np.rad2deg(np.arcsin(-cam.vehicle_from_camera[2, 2])))
        assert -2.5 <= pitch_down <= 10.5


# --- image sizes and lenses --------------------------------------------------------------------


def test_image_sizes_at_the_default_pixels() -> None:
    aspects = set()
    for seed in range(40):
        rig = random_rig(rng(seed))
        sizes = {cam.image_size_hw for cam in rig.cameras}
        assert len(sizes) == 1, "one size for every camera of a rig"
        ((h, w),) = sizes
        assert h >= 192 and w >= 256 and h % 8 == 0 and w % 8 == 0
        assert abs(h * w - 480 * 320) <= 0.06 * 480 * 320
        aspects.add(min((*ASPECTS_WH, (1, 1)), key=lambda a: abs(a[0] / a[1] - w / h)))
    assert len(aspects) >= 5


@pytest.mark.parametrize("pixels", [100 * 80, 64 * 48, 300 * 300])
def test_image_size_never_under_the_floor(pixels: int) -> None:
    for seed in range(10):
        for square in (False, True):
            h, w = image_size_hw(rng(seed), pixels, (192, 256), square=square)
            assert h >= 192 and w >= 256 and h % 8 == 0 and w % 8 == 0
            assert (h == w) == square


@pytest.mark.parametrize("family", FAMILIES)
def test_family_selector_gives_one_family_jittered_per_camera(family: str) -> None:
    rig = random_rig(rng(3), family=family)
    models = [cam.model for cam in rig.cameras]
    assert all(type(m) is MODEL_TYPES[family] for m in models)
    assert len({repr(m) for m in models}) == 4, "each camera's parameters are its own"


def test_fisheye_fields_of_view_and_image_circles() -> None:
    """170 to 200 degrees; the whole image circle inside the frame on some rigs (dark top and corners),
    cropped by the frame on others."""
    inside, cropped = 0, 0
    for seed in range(30):
        for family in ("fisheye", "ocam"):
            rig = small_rig(seed, family=family)
            model = rig.cameras[0].model
            assert isinstance(model, FisheyeCamera | OcamCamera)
            assert model.max_angle_deg is not None and 85.0 <= model.max_angle_deg <= 100.0
            w = model.image_size_hw[1]
            corner_seen = model.unproject(np.array([[0.0, 0.0]]))[1][0]
            top_seen = model.unproject(np.array([[w / 2, 0.0]]))[1][0]
            assert not corner_seen or top_seen
            inside += int(not top_seen)
            cropped += int(top_seen)
    assert inside >= 5 and cropped >= 5


def test_mei_and_pinhole_parameters_within_their_ranges() -> None:
    for seed in range(12):
        mei = small_rig(seed, family="mei")
        assert all(isinstance(c.model, MeiCamera) and 0.6 <= c.model.xi <= 1.6 for c in mei.cameras)
        pinhole = small_rig(seed, family="pinhole")
        for cam in pinhole.cameras:
            assert isinstance(cam.model, PinholeCamera)
            assert 89.5 <= horizontal_fov_deg(cam.model) <= 120.5


# --- rendering ---------------------------------------------------------------------------------


def check_frames(
    rig: Rig, renderer: Renderer, world: SyntheticWorld, seed: int
) -> tuple[RenderedFrameSet, dict[str, np.ndarray]]:
    """Render one frame set and check its images and labels; returns it and each camera's body pixels."""
    fs = renderer.render(world, world.sample_pose(rng(seed)), seed=seed)
    grounds = 0
    for cam in rig.cameras:
        h, w = cam.image_size_hw
        image, labels = fs.images[cam.name], fs.labels[cam.name]
        assert image.dtype == np.uint8 and image.shape == (h, w, 3)
        assert labels.dtype == np.uint8 and labels.shape == (h, w)
        assert labels.max() < NUM_CLASSES
        grounds += int(np.isin(labels, GROUND_IDS).sum())
    assert grounds > 0
    assert fs.bev_oracle.shape == rig.grid.shape
    body = {c.name: c.to_image(c.base_hit >= 0) for c in renderer.cameras}  # rays that meet the car first
    for name, mask in body.items():
        assert np.array_equal(fs.body[name], mask), f"{name}: the frame set's body mask"
        assert not np.isin(fs.labels[name][mask], GROUND_IDS).any(), f"{name}: a body pixel labelled ground"
    return fs, body


@pytest.mark.parametrize(
    ("family", "seed", "pixels"),
    [
        ("fisheye", 0, 160 * 120),
        ("fisheye", 1, 128 * 128),
        ("mei", 2, 160 * 120),
        ("mei", 3, 200 * 100),
        ("ocam", 4, 160 * 120),
        ("ocam", 5, 144 * 144),
        ("pinhole", 6, 160 * 120),
        ("pinhole", 7, 200 * 100),
    ],
)
def test_surround_rig_renders_with_its_body_in_view(world: SyntheticWorld, family: str, seed: int, pixels: int) -> None:
    rig = random_rig(rng(seed), family=family, pixels=pixels, min_size_hw=(64, 64))
    renderer = Renderer(rig, scale=1.0)
    assert renderer.body == full_body(rig)
    fs, body = check_frames(rig, renderer, world, seed)
    for name in ("left", "right"):
        bottom = slice(-max(2, rig.camera(name).image_size_hw[0] // 8), None)
        assert body[name][bottom].any(), f"{name}: the car's flank is not in the bottom rows"
        assert (fs.labels[name][bottom] == 0).mean() > 0


def test_dashboard_rig_renders_with_the_hood_in_some_views(world: SyntheticWorld) -> None:
    hood_seen = 0
    for seed in range(3):
        rig = small_rig(seed, cameras="front_pinhole")
        renderer = Renderer(rig, scale=1.0)
        assert renderer.body, "the body is rendered"
        body = check_frames(rig, renderer, world, seed)[1]["front"]
        hood_seen += int(body[-2:].any())
    assert hood_seen >= 1


def test_dashboard_rig_renders_the_whole_body() -> None:
    rig = small_rig(0, cameras="front_pinhole")
    assert ego_parts(rig) == full_body(rig)
