"""Rendering: label truth against a slow per-ray reference, sky and ground where they belong,
determinism, and clear errors for what cannot be rendered."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bev_service.classes import CLASS_IDS, CLASSES
from bev_service.errors import CalibrationError
from bev_service.geometry.cameras import FisheyeCamera, Intrinsics
from bev_service.geometry.grid import EGO
from bev_service.geometry.rig import Camera, GroundHomography, Rig
from bev_service.synth import Renderer, SyntheticWorld, VehiclePose, renderer_for
from bev_service.synth.objects import Primitive
from bev_service.synth.render import RenderedFrameSet

GROUND_IDS = {c.id for c in CLASSES if c.ground}


# --- a slow, scalar reference: one ray at a time, plain Python maths ------------------------------


def _box_t(prim: Primitive, o: np.ndarray, d: np.ndarray) -> float:
    c, s = math.cos(prim.yaw_rad), math.sin(prim.yaw_rad)
    rel = o - np.asarray(prim.centre)
    lo = [c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2]]
    ld = [c * d[0] + s * d[1], -s * d[0] + c * d[1], d[2]]
    t_in, t_out = -math.inf, math.inf
    for axis in range(3):
        h = prim.size[axis]
        if abs(ld[axis]) < 1e-15:
            if abs(lo[axis]) > h:
                return math.inf
            continue
        a, b = (-h - lo[axis]) / ld[axis], (h - lo[axis]) / ld[axis]
        t_in, t_out = max(t_in, min(a, b)), min(t_out, max(a, b))
    return t_in if t_in <= t_out and t_in > 1e-4 else math.inf


def _frustum_t(prim: Primitive, o: np.ndarray, d: np.ndarray) -> float:
    r0, r1, height = prim.size
    p = o - np.asarray(prim.centre)
    slope = (r1 - r0) / height

    def inside_at(t: float) -> bool:  # on the side surface within the height
        z = p[2] + t * d[2]
        return t > 1e-4 and 0.0 <= z <= height and r0 + slope * z >= 0

    # |xy(t)|^2 - r(z(t))^2 = 0 as a polynomial in t, solved by numpy.roots
    coeffs = [
        d[0] ** 2 + d[1] ** 2 - (slope * d[2]) ** 2,
        2 * (p[0] * d[0] + p[1] * d[1]) - 2 * slope * d[2] * (r0 + slope * p[2]),
        p[0] ** 2 + p[1] ** 2 - (r0 + slope * p[2]) ** 2,
    ]
    best = math.inf
    for root in np.roots(coeffs):
        if abs(root.imag) < 1e-9 and inside_at(root.real):
            best = min(best, root.real)
    if abs(d[2]) > 1e-12:
        t = (height - p[2]) / d[2]
        if t > 1e-4 and (p[0] + t * d[0]) ** 2 + (p[1] + t * d[1]) ** 2 <= r1 * r1:
            best = min(best, t)
    return best


def _sphere_t(prim: Primitive, o: np.ndarray, d: np.ndarray) -> float:
    to_centre = np.asarray(prim.centre) - o
    along = float(to_centre @ d)
    miss2 = float(to_centre @ to_centre) - along * along
    r2 = prim.size[0] ** 2
    if miss2 > r2:
        return math.inf
    t = along - math.sqrt(r2 - miss2)
    return t if t > 1e-4 else math.inf


def reference_label(rig: Rig, world: SyntheticWorld, fs: RenderedFrameSet, camera: str, uv: tuple[float, float]) -> int:
    """Class of the first surface the pixel's ray meets: ground, a primitive, the skyline, or nothing."""
    cam = rig.camera(camera)
    ray, valid = cam.model.unproject(np.array(uv, dtype=np.float64))
    if not valid:
        return 0
    assert cam.vehicle_from_camera is not None
    d = cam.vehicle_from_camera[:3, :3] @ ray
    o = cam.vehicle_from_camera[:3, 3]
    best_t, best = math.inf, 0
    if d[2] < -1e-6:
        best_t = -o[2] / d[2]
        x, y = o[0] + best_t * d[0], o[1] + best_t * d[1]
        pose = fs.pose
        wx = pose.x_m + math.cos(pose.yaw_rad) * x - math.sin(pose.yaw_rad) * y
        wy = pose.y_m + math.sin(pose.yaw_rad) * x + math.cos(pose.yaw_rad) * y
        g = world.ground
        col = min(max(math.floor((wx - g.origin_xy[0]) / g.cell_m), 0), g.shape[1] - 1)
        row = min(max(math.floor((wy - g.origin_xy[1]) / g.cell_m), 0), g.shape[0] - 1)
        best = int(g.labels[row, col])
    for prim in fs.scene:
        t = {"box": _box_t, "frustum": _frustum_t, "sphere": _sphere_t}[prim.shape](prim, o, d)
        if t < best_t:
            best_t, best = t, prim.class_id
    if _skyline_t(world, fs.pose, o, d) < best_t:
        best = 0
    return best


def _skyline_t(world: SyntheticWorld, pose: VehiclePose, o: np.ndarray, d: np.ndarray) -> float:
    c, s = math.cos(pose.yaw_rad), math.sin(pose.yaw_rad)
    ox, oy = pose.x_m + c * o[0] - s * o[1], pose.y_m + s * o[0] + c * o[1]
    dx, dy = c * d[0] - s * d[1], s * d[0] + c * d[1]
    a, b = dx * dx + dy * dy, 2 * (ox * dx + oy * dy)
    cc = ox * ox + oy * oy - world.skyline.radius_m**2
    if a < 1e-15:
        return math.inf
    t = (-b + math.sqrt(b * b - 4 * a * cc)) / (2 * a)
    x, y, z = ox + t * dx, oy + t * dy, o[2] + t * d[2]
    n = world.skyline.heights_m.size
    k = min(int((math.atan2(y, x) + math.pi) / (2 * math.pi) * n), n - 1)
    return t if 0 <= z <= world.skyline.heights_m[k] else math.inf


# --- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_frame_set(world: SyntheticWorld, small_renderer: Renderer) -> RenderedFrameSet:
    """A frame set in the parking lot: cars, people, cones and poles near the cameras."""
    lot = world.layout.lot
    assert lot is not None
    a, b = lot.aisles[0]
    centre = (a + b) / 2
    pose = VehiclePose(float(centre[0]), float(centre[1]), float(np.arctan2(b[1] - a[1], b[0] - a[0])))
    return small_renderer.render(world, pose, time_s=12.0, seed=4)


def _sample_pixels(labels: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Random pixels, plus pixels of every object class present and pixels on label edges."""
    h, w = labels.shape
    picks = [(int(r), int(c)) for r, c in zip(rng.integers(0, h, 120), rng.integers(0, w, 120), strict=True)]
    for class_id in (CLASS_IDS["vehicle"], CLASS_IDS["pedestrian"], CLASS_IDS["static_obstacle"]):
        rows, cols = np.nonzero(labels == class_id)
        for k in rng.choice(rows.size, size=min(25, rows.size), replace=False):
            picks.append((int(rows[k]), int(cols[k])))
    edge = np.zeros_like(labels, dtype=bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    rows, cols = np.nonzero(edge)
    for k in rng.choice(rows.size, size=min(60, rows.size), replace=False):
        picks.append((int(rows[k]), int(cols[k])))
    return picks


def test_labels_are_the_class_of_the_first_surface_hit(rig: Rig, world: SyntheticWorld, busy_frame_set: RenderedFrameSet) -> None:
    rng = np.random.default_rng(0)
    scale = busy_frame_set.labels["front"].shape[0] / rig.cameras[0].image_size_hw[0]
    checked, wrong, objects = 0, [], 0
    for name in busy_frame_set.camera_names:
        labels = busy_frame_set.labels[name]
        for row, col in _sample_pixels(labels, rng):
            uv = ((col + 0.5) / scale - 0.5, (row + 0.5) / scale - 0.5)
            expected = reference_label(rig, world, busy_frame_set, name, uv)
            checked += 1
            objects += expected in (5, 6, 7)
            if labels[row, col] != expected:
                wrong.append((name, row, col, int(labels[row, col]), expected))
    assert objects >= 50, "the sample should hold object pixels"
    assert checked > 800
    assert not wrong, f"{len(wrong)} of {checked} pixels disagree (camera, row, col, rendered, reference): {wrong[:10]}"


def test_every_object_class_is_rendered_in_the_lot(busy_frame_set: RenderedFrameSet) -> None:
    seen = set(np.unique(np.stack(list(busy_frame_set.labels.values()))).tolist())
    assert {CLASS_IDS["vehicle"], CLASS_IDS["road"], CLASS_IDS["lane_marking"], 0} <= seen
    assert seen <= {c.id for c in CLASSES}


def test_sky_above_the_horizon_and_ground_below(rig: Rig, small_renderer: Renderer, busy_frame_set: RenderedFrameSet) -> None:
    for i, cam in enumerate(small_renderer.cameras):
        labels = busy_frame_set.labels[cam.name].reshape(-1)
        dirs = cam.to_image(cam.dirs.reshape(-1, 3)).reshape(-1, 3)
        up = dirs[:, 2] > 0.05
        assert up.sum() > 100
        assert (labels[up] == 0).mean() > 0.6, f"{cam.name}: rays above the horizon should mostly see sky or skyline"
        assert not np.isin(labels[up], list(GROUND_IDS)).any(), f"{cam.name}: ground class above the horizon"
        image = busy_frame_set.images[cam.name].reshape(-1, 3).astype(float)
        sky_blue = image[up & (labels == 0), 2].mean()
        assert sky_blue > 80, f"camera {i}: the sky should be bright"


def test_objects_stand_upright(small_renderer: Renderer, busy_frame_set: RenderedFrameSet) -> None:
    """Pixels of vehicles and pedestrians look at points from the ground up to their height."""
    vehicle = CLASS_IDS["vehicle"]
    heights = []
    for cam in small_renderer.cameras:
        t, hit = small_renderer._intersect(cam, busy_frame_set.scene)
        on = np.flatnonzero(hit >= len(small_renderer.body))
        points = cam.origin + t[on, None].astype(float) * cam.dirs.reshape(-1, 3)[on]
        classes = np.array([busy_frame_set.scene[k].class_id for k in hit[on]])
        heights.append(points[classes == vehicle, 2])
    z = np.concatenate(heights)
    assert z.min() >= -1e-3 and 1.3 <= z.max() <= 2.5 and np.percentile(z, 10) < 0.6


def test_true_bev_is_complete_with_ego_and_footprints(small_renderer: Renderer, busy_frame_set: RenderedFrameSet) -> None:
    truth = busy_frame_set.bev_truth
    assert truth.shape == small_renderer.rig.grid.shape and truth.dtype == np.uint8
    assert (truth[small_renderer.projector.tables.ego] == EGO).all()
    assert not (truth == 255).any(), "the truth is complete: no unknown cells"
    assert (truth == CLASS_IDS["vehicle"]).sum() > 2000, "parked cars around the lot aisle"
    assert busy_frame_set.unknown.dtype == bool and busy_frame_set.unknown.shape == truth.shape


def test_the_body_is_in_view_and_never_a_ground_class(small_renderer: Renderer, busy_frame_set: RenderedFrameSet) -> None:
    """Every pixel whose ray meets the car's own body first is labelled background, whatever lies under it."""
    seen = 0
    for cam in small_renderer.cameras:
        body = cam.to_image(cam.base_hit >= 0)
        seen += int(body.sum())
        assert np.array_equal(busy_frame_set.body[cam.name], body), f"{cam.name}: the frame set's body mask"
        labels = busy_frame_set.labels[cam.name][body]
        assert not np.isin(labels, list(GROUND_IDS)).any(), f"{cam.name}: a body pixel labelled ground"
        assert (labels == CLASS_IDS["background"]).all(), f"{cam.name}: a body pixel labelled as an object"
    assert seen > 0, "the default rig's cameras see the car's body"
    assert busy_frame_set.body_stack().shape == busy_frame_set.label_stack().shape


def test_same_inputs_render_identically_and_seeds_differ(world: SyntheticWorld, small_renderer: Renderer) -> None:
    pose = world.pose_on_route(30.0)
    a = small_renderer.render(world, pose, time_s=1.0, seed=3)
    b = small_renderer.render(world, pose, time_s=1.0, seed=3)
    c = small_renderer.render(world, pose, time_s=1.0, seed=4)
    for name in a.camera_names:
        assert a.jpeg[name] == b.jpeg[name]
        assert np.array_equal(a.labels[name], b.labels[name])
        assert a.jpeg[name] != c.jpeg[name], "another seed draws other lighting and noise"
        assert np.array_equal(a.labels[name], c.labels[name]), "labels depend on the world and pose only"
        assert a.images[name].shape == (160, 240, 3) and a.images[name].dtype == np.uint8


def test_camera_without_pose_cannot_be_rendered(rig: Rig) -> None:
    model = FisheyeCamera(Intrinsics(300, 300, 479.5, 319.5), (640, 960))
    homography = GroundHomography(np.array([[0.01, 0, -4.8], [0, 0.01, 3.0], [0, 0.001, 1.0]]), np.eye(3) * [300, 300, 1])
    cameras = (*rig.cameras[:3], Camera("right", model, ground_homography=homography))
    homography_rig = Rig("h", "1", cameras, rig.grid, rig.ego)
    with pytest.raises(CalibrationError, match=r"right.*vehicle_from_camera.*homography"):
        Renderer(homography_rig, scale=0.25)


def test_scale_must_keep_a_usable_size(rig: Rig) -> None:
    with pytest.raises(ValueError, match="scale"):
        renderer_for(rig, 0.0)
