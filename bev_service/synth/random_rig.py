"""Randomized rigs: cars of random size with cameras of random models, mounts and image sizes, so that a
network trained on the synthetic world is not tied to one rig's views.

``random_rig(rng)`` draws a surround-view rig like production systems (WoodScape, the default rig): four
cameras named front, left, rear, right, in the grille, under the mirrors and on the tailgate, all of one
model family (Kannala-Brandt fisheye, Mei, OCam polynomial, or now and then a wide pinhole) with their
parameters jittered per camera. ``cameras="front_pinhole"`` draws one forward dashboard camera instead.
Every camera sits outside the body primitives the renderer builds (``objects.ego_body``), so the car's
own body is rendered and seen: below the side cameras, and as the hood at the bottom of a dashboard view.

The vehicle frame is the default rig's: ISO 8855 axes, origin on the ground at the footprint's centre.
The same generator state gives the same rig; every rig is checked by the rig file's own round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from bev_service.calib.import_common import square_grid, validated
from bev_service.geometry import cameras as cm
from bev_service.geometry.grid import EgoBox
from bev_service.geometry.rig import Camera, Rig
from bev_service.geometry.transforms import vehicle_from_camera_mount
from bev_service.synth import objects as obj
from bev_service.synth.raycast import ray_distance

FloatArray = NDArray[np.float64]

FAMILIES = ("fisheye", "mei", "ocam", "pinhole")  # named as the rig file's model types
FAMILY_WEIGHTS = (0.4, 0.25, 0.25, 0.1)
LAYOUTS = ("surround", "front_pinhole")
MEI_XI = (0.6, 1.6)
WHOLE_CIRCLE_SHARE = 0.3  # of fisheye and OCam rigs whose image circle lies wholly inside the frame
MIN_SIZE_HW = (192, 256)  # the training crops
ASPECTS_WH = ((4, 3), (3, 2), (16, 10), (16, 9), (1280, 966))
SQUARE_SHARE = 0.1  # of rigs with a 1:1 sensor (omnidirectional families only)
CELL_SIZE_M = 0.05
# The default rig's grid reaches 7.65 m beyond its bumpers (20 m square about a 4.7 m car).
GRID_BEYOND_BUMPER_M = 7.65
DASHCAM_GRID_AHEAD_M = 20.0
# The rendered hood is flat at the body box's top (1.05 m), higher than a real hood's front edge: a lens
# this far above it sees the hood's edge 7 to 20 degrees below the horizon, not across most of the view.
DASHCAM_ABOVE_HOOD_M = 0.2
SIDE_BODY_SHARE = 0.05  # of the lower third of a side camera's image that shows the car's flank
_TRIES = 50


@dataclass(frozen=True)
class Lens:
    """One draw of a lens: ``fov_deg`` is the full field of view of the image circle (horizontal for a
    pinhole); ``circle`` the circle's radius over half the image's shorter side (omnidirectional families:
    up to 1 the whole circle lies inside the frame, beyond it the frame crops the circle);
    ``coeffs`` the family's distortion (fisheye k1..k4; Mei k1, k2, p1, p2; OCam c2, c3 of
    rho = f (a + c2 a^2 + c3 a^3) for the off-axis angle a; pinhole k1, k2, p1, p2)."""

    family: str
    fov_deg: float
    circle: float
    coeffs: tuple[float, ...]
    xi: float = 0.0
    fov_range_deg: tuple[float, float] = (170.0, 200.0)  # what the per-camera jitter stays within


def random_rig(
    rng: np.random.Generator,
    *,
    pixels: int = 480 * 320,
    cameras: str = "surround",
    family: str | None = None,
    min_size_hw: tuple[int, int] = MIN_SIZE_HW,
) -> Rig:
    """A random, validated rig. ``pixels``: about the image area of every camera (w * h, both multiples
    of 8, never under ``min_size_hw``); ``cameras``: "surround" (front, left, rear, right) or
    "front_pinhole" (one dashboard camera named front); ``family``: the camera model family of a
    surround rig (one of ``FAMILIES``; None draws one)."""
    family = _family(rng, cameras, family, pixels, min_size_hw)
    car = _car(rng)
    size_hw = image_size_hw(rng, pixels, min_size_hw, square=family != "pinhole" and rng.random() < SQUARE_SHARE)
    kind = f"surround-{family}" if cameras == "surround" else "front-pinhole"
    rig_id = f"random-{kind}-{int(rng.integers(2**32)):08x}"
    rig = _surround(rng, rig_id, car, family, size_hw) if cameras == "surround" else _dashboard(rng, rig_id, car, size_hw)
    (x0, x1), (y0, y1) = car.x_range_m, car.y_range_m
    description = (
        f"Randomized {cameras} rig: {family} cameras of {size_hw[1]}x{size_hw[0]} (w x h) on a "
        f"{x1 - x0:.3f} m x {y1 - y0:.3f} m x {car.height_m:.3f} m car; origin at the footprint's centre."
    )
    return validated(rig, description).rig


def _family(rng: np.random.Generator, cameras: str, family: str | None, pixels: int, min_size_hw: tuple[int, int]) -> str:
    """The arguments checked, and the rig's model family (drawn when not given)."""
    if cameras not in LAYOUTS:
        raise ValueError(f"cameras must be one of {', '.join(LAYOUTS)}, got {cameras!r}")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)} or None, got {family!r}")
    if cameras == "front_pinhole" and family not in (None, "pinhole"):
        raise ValueError(f"a front_pinhole rig has one pinhole camera, got family {family!r}")
    if not pixels > 0 or len(min_size_hw) != 2 or min(min_size_hw) <= 0:
        raise ValueError(f"pixels and min_size_hw (height, width) must be positive, got {pixels} and {min_size_hw}")
    if cameras == "front_pinhole":
        return "pinhole"
    return family if family is not None else str(rng.choice(FAMILIES, p=FAMILY_WEIGHTS))


def image_size_hw(rng: np.random.Generator, pixels: int, min_size_hw: tuple[int, int], *, square: bool) -> tuple[int, int]:
    """(h, w), multiples of 8, w * h about ``pixels`` at a common sensor aspect ratio (1:1 when ``square``),
    scaled up where needed to reach ``min_size_hw``."""
    aw, ah = (1, 1) if square else ASPECTS_WH[int(rng.integers(len(ASPECTS_WH)))]
    h = np.sqrt(pixels * ah / aw)
    w = h * aw / ah
    grow = max(1.0, min_size_hw[0] / h, min_size_hw[1] / w)
    h, w = _multiple_of_8(h * grow), _multiple_of_8(w * grow)
    return max(h, -(-min_size_hw[0] // 8) * 8), max(w, -(-min_size_hw[1] // 8) * 8)


def _multiple_of_8(side: float) -> int:
    return max(8, round(side / 8) * 8)


# --- the car ------------------------------------------------------------------------------------


def _car(rng: np.random.Generator) -> EgoBox:
    """A footprint about the origin (the footprint's centre) and a body height, to the millimetre."""
    half_l = round(rng.uniform(3.8, 5.3) / 2, 3)
    half_w = round(rng.uniform(1.65, 2.05) / 2, 3)
    return EgoBox((-half_l, half_l), (-half_w, half_w), round(float(rng.uniform(1.35, 1.9)), 3))


def _grid_half_extent(ego: EgoBox) -> float:
    return float(ego.x_range_m[1] + GRID_BEYOND_BUMPER_M)


def _body(ego: EgoBox) -> tuple[obj.Primitive, ...]:
    """The body primitives the renderer intersects (``rays.ego_parts`` for cameras outside the footprint)."""
    return obj.ego_body(ego.x_range_m, ego.y_range_m, (128.0, 128.0, 128.0))


# --- surround-view rigs ---------------------------------------------------------------------------


def _surround(rng: np.random.Generator, rig_id: str, ego: EgoBox, family: str, size_hw: tuple[int, int]) -> Rig:
    base = _lens(rng, family, size_hw)
    body = _body(ego)
    cams = []
    for name in ("front", "left", "rear", "right"):
        model = _camera_model(rng, base, size_hw)
        for _ in range(_TRIES):
            camera = Camera(name, model, vehicle_from_camera=_surround_pose(rng, name, ego))
            # A side camera looks down past the sill: the car's flank shows in its lower part.
            if name in ("front", "rear") or _sees_body(camera, body):
                break
        else:
            camera = Camera(name, model, vehicle_from_camera=_surround_pose(rng, name, ego, steepest=True))
        cams.append(camera)
    grid = square_grid((0.0, 0.0), CELL_SIZE_M, _grid_half_extent(ego))
    return Rig(rig_id, "1", tuple(cams), grid, ego)


def _surround_pose(rng: np.random.Generator, name: str, ego: EgoBox, *, steepest: bool = False) -> FloatArray:
    """Where production rigs mount each camera: grille and tailgate just out from the body's faces,
    under the mirrors over the front third of the flanks; ``steepest`` tilts a side camera down most."""
    (x0, x1), (y0, y1) = ego.x_range_m, ego.y_range_m
    yaw_jitter, roll = rng.uniform(-3.0, 3.0), rng.uniform(-3.0, 3.0)
    if name == "front":
        position = (x1 + rng.uniform(0.02, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(0.4, 1.0))
        return vehicle_from_camera_mount(position, yaw_jitter, rng.uniform(5.0, 40.0), roll)
    if name == "rear":
        position = (x0 - rng.uniform(0.02, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(0.5, 1.2))
        return vehicle_from_camera_mount(position, 180.0 + yaw_jitter, rng.uniform(10.0, 40.0), roll)
    side = 1.0 if name == "left" else -1.0
    x = x1 - rng.uniform(0.22, 0.36) * (x1 - x0)
    y = (y1 + rng.uniform(0.05, 0.25)) if side > 0 else (y0 - rng.uniform(0.05, 0.25))
    pitch = 75.0 if steepest else rng.uniform(20.0, 75.0)
    yaw = side * 90.0 + rng.uniform(-5.0, 5.0)  # mirror housings toe the camera a little either way
    return vehicle_from_camera_mount((x, y, rng.uniform(0.8, 1.2)), yaw, pitch, roll)


def _sees_body(camera: Camera, body: tuple[obj.Primitive, ...]) -> bool:
    """Whether the body fills at least ``SIDE_BODY_SHARE`` of the lower third of the image (sampled on a
    12 x 32 grid of pixels; those outside the image circle not counted)."""
    h, w = camera.image_size_hw
    vv, uu = np.meshgrid(np.linspace(h * 2 / 3, h - 1, 12), np.linspace(0, w - 1, 32), indexing="ij")
    rays, valid = camera.model.unproject(np.stack([uu, vv], axis=-1))
    assert camera.vehicle_from_camera is not None
    dirs = rays[valid] @ camera.vehicle_from_camera[:3, :3].T  # (N, 3) vehicle frame
    origin = camera.vehicle_from_camera[:3, 3]
    hits = np.zeros(len(dirs), dtype=bool)
    for part in body:
        hits |= np.isfinite(ray_distance(part, origin, dirs))
    return bool(hits.size) and float(hits.mean()) >= SIDE_BODY_SHARE


# --- dashboard camera -------------------------------------------------------------------------------


def _dashboard(rng: np.random.Generator, rig_id: str, car: EgoBox, size_hw: tuple[int, int]) -> Rig:
    """One forward pinhole just ahead of the windscreen (the cabin's front face), above the hood.

    The ego box's height is the hood's: the camera looks over it, and the hood hides the ground just
    ahead of the bumper (a box as tall as the cabin would hide everything from a camera inside it)."""
    _, body, cabin = _body(car)
    cabin_front_x = cabin.centre[0] + cabin.size[0]
    hood_z = body.centre[2] + body.size[2]
    position = (
        cabin_front_x + rng.uniform(0.03, 0.2),
        rng.uniform(-0.25, 0.25),
        rng.uniform(max(1.1, hood_z + DASHCAM_ABOVE_HOOD_M), 1.6),
    )
    pose = vehicle_from_camera_mount(position, rng.uniform(-3.0, 3.0), rng.uniform(-2.0, 10.0), rng.uniform(-2.0, 2.0))
    lens = _lens(rng, "pinhole", size_hw, hfov_deg=(60.0, 120.0))
    camera = Camera("front", _camera_model(rng, lens, size_hw), vehicle_from_camera=pose)
    ego = EgoBox(car.x_range_m, car.y_range_m, round(hood_z, 3))
    half = DASHCAM_GRID_AHEAD_M / 2
    return Rig(rig_id, "1", (camera,), square_grid((half, 0.0), CELL_SIZE_M, half), ego)


# --- lenses ---------------------------------------------------------------------------------------


def _lens(rng: np.random.Generator, family: str, size_hw: tuple[int, int], hfov_deg: tuple[float, float] = (90.0, 120.0)) -> Lens:
    """The rig's lens: field of view, image circle and distortion, redrawn until the model is valid
    (monotonic) over the whole image circle; without distortion if no draw is."""
    for _ in range(_TRIES):
        if family == "pinhole":
            lens = Lens(family, rng.uniform(*hfov_deg), 0.0, _pinhole_coeffs(rng), fov_range_deg=hfov_deg)
        else:
            fov = rng.uniform(170.0, 200.0)
            circle = _circle(rng, family)
            xi = rng.uniform(*MEI_XI) if family == "mei" else 0.0
            lens = Lens(family, fov, circle, _omni_coeffs(rng, family), xi)
        if _model_or_none(lens, size_hw) is not None:
            return lens
    return replace(lens, coeffs=tuple(0.0 for _ in lens.coeffs))


def _circle(rng: np.random.Generator, family: str) -> float:
    """The image circle's radius over half the shorter side: now and then the whole circle inside the
    frame (dark corners and sides, as on many 1:1 and 4:3 sensors), mostly cropped at the top and bottom
    (the default rig, WoodScape). The Mei model has no circle: it sets where the field of view is reached."""
    if family != "mei" and rng.random() < WHOLE_CIRCLE_SHARE:
        return float(rng.uniform(0.88, 1.0))
    return float(rng.uniform(1.1 if family == "mei" else 1.0, 1.8))


def _pinhole_coeffs(rng: np.random.Generator) -> tuple[float, ...]:
    return (rng.uniform(-0.12, 0.0), rng.uniform(0.0, 0.02), rng.uniform(-5e-4, 5e-4), rng.uniform(-5e-4, 5e-4))


def _omni_coeffs(rng: np.random.Generator, family: str) -> tuple[float, ...]:
    if family == "fisheye":
        return (rng.uniform(-0.03, 0.03), rng.uniform(-0.004, 0.004), rng.uniform(-8e-4, 8e-4), rng.uniform(-1e-4, 1e-4))
    if family == "mei":
        return (rng.uniform(-0.04, 0.04), rng.uniform(-0.01, 0.01), rng.uniform(-3e-4, 3e-4), rng.uniform(-3e-4, 3e-4))
    return (rng.uniform(-0.06, 0.05), rng.uniform(-0.015, 0.01))


def _camera_model(rng: np.random.Generator, base: Lens, size_hw: tuple[int, int]) -> cm.CameraModel:
    """One camera's model: the rig's lens with its field of view, image circle and distortion jittered
    (the spread of one lens type across units) and its own principal point and pixel aspect."""
    h, w = size_hw
    centre = ((w - 1) / 2 + rng.uniform(-0.015, 0.015) * w, (h - 1) / 2 + rng.uniform(-0.015, 0.015) * h)
    aspect = 1.0 + rng.uniform(-0.005, 0.005)
    for _ in range(_TRIES):
        lens = replace(
            base,
            fov_deg=float(np.clip(base.fov_deg + rng.uniform(-2.0, 2.0), *base.fov_range_deg)),
            circle=base.circle * rng.uniform(0.98, 1.02),
            coeffs=tuple(c * rng.uniform(0.9, 1.1) for c in base.coeffs),
            xi=float(np.clip(base.xi * rng.uniform(0.98, 1.02), *MEI_XI)) if base.family == "mei" else 0.0,
        )
        model = _model_or_none(lens, size_hw, centre, aspect)
        if model is not None:
            return model
    model = _model_or_none(base, size_hw, centre, aspect)
    assert model is not None, "the rig's lens was checked when it was drawn"
    return model


def _model_or_none(
    lens: Lens, size_hw: tuple[int, int], centre: tuple[float, float] | None = None, aspect: float = 1.0
) -> cm.CameraModel | None:
    """The camera model of ``lens`` for an image of ``size_hw``, or None where its distortion folds inside
    the image it must cover."""
    h, w = size_hw
    cx, cy = centre if centre is not None else ((w - 1) / 2, (h - 1) / 2)
    half_angle = np.deg2rad(lens.fov_deg) / 2
    radius_px = lens.circle * min(w, h) / 2
    if lens.family == "fisheye":
        k = (float(lens.coeffs[0]), float(lens.coeffs[1]), float(lens.coeffs[2]), float(lens.coeffs[3]))
        t = np.linspace(0.0, half_angle, 512)
        if not (_kb_slope(k, t) > 0).all():
            return None
        f = radius_px / float(half_angle * (1 + sum(c * half_angle ** (2 * i + 2) for i, c in enumerate(k))))
        return cm.FisheyeCamera(cm.Intrinsics(f, f * aspect, cx, cy), size_hw, k, float(np.rad2deg(half_angle)))
    if lens.family == "ocam":
        return _ocam(lens, size_hw, (cx, cy), aspect, half_angle, radius_px)
    if lens.family == "mei":
        return _mei(lens, size_hw, (cx, cy), aspect, half_angle, radius_px)
    return _pinhole(lens, size_hw, (cx, cy), aspect)


def _kb_slope(k: tuple[float, float, float, float], t: FloatArray) -> FloatArray:
    """d theta_d / d theta of Kannala-Brandt."""
    t2 = t * t
    return np.asarray(1 + t2 * (3 * k[0] + t2 * (5 * k[1] + t2 * (7 * k[2] + t2 * 9 * k[3]))))


def _ocam(
    lens: Lens, size_hw: tuple[int, int], centre: tuple[float, float], aspect: float, half_angle: float, radius_px: float
) -> cm.OcamCamera | None:
    """rho = f (a + c2 a^2 + c3 a^3) in the off-axis angle a = theta + pi/2, written out in powers of OCam's
    theta (0 on the optical axis at theta = -pi/2, as the model requires); the image circle ends at
    ``half_angle``. The affine part's c is the pixel aspect."""
    c2, c3 = lens.coeffs
    a = np.linspace(0.0, half_angle, 512)
    if not (1 + 2 * c2 * a + 3 * c3 * a * a > 0).all():
        return None
    f = radius_px / (half_angle + c2 * half_angle**2 + c3 * half_angle**3)
    in_angle = np.polynomial.Polynomial([0.0, f, f * c2, f * c3])
    in_theta = in_angle(np.polynomial.Polynomial([np.pi / 2, 1.0]))  # a = theta + pi/2
    return cm.OcamCamera(
        size_hw, tuple(float(c) for c in in_theta.coef), centre, (aspect, 0.0, 0.0), float(np.rad2deg(half_angle))
    )


def _mei(
    lens: Lens, size_hw: tuple[int, int], centre: tuple[float, float], aspect: float, half_angle: float, radius_px: float
) -> cm.MeiCamera | None:
    """The unified model with ``half_angle`` at ``radius_px`` from the centre; the model has no angle
    limit, so the image reaches beyond that where the frame does (up to where the model folds)."""
    distortion = cm.RadTan(*lens.coeffs)
    r = float(np.sin(half_angle) / (np.cos(half_angle) + lens.xi))  # normalised radius of the circle's edge
    if not distortion.max_radius > 1.05 * r:
        return None
    f = radius_px / float(np.hypot(*distortion.distort(np.array([r, 0.0]))))
    return cm.MeiCamera(cm.Intrinsics(f, f * aspect, *centre), size_hw, lens.xi, distortion)


def _pinhole(lens: Lens, size_hw: tuple[int, int], centre: tuple[float, float], aspect: float) -> cm.PinholeCamera | None:
    """A pinhole whose horizontal field of view is ``fov_deg``; None where its distortion folds before
    the image's corners."""
    h, w = size_hw
    distortion = cm.RadTan(*lens.coeffs)
    edge = float(distortion.distort(np.array([np.tan(np.deg2rad(lens.fov_deg) / 2), 0.0]))[0])
    model = cm.PinholeCamera(cm.Intrinsics((w / 2) / edge, (w / 2) / edge * aspect, *centre), size_hw, distortion)
    corners = np.array([[0.0, 0.0], [w - 1.0, 0.0], [0.0, h - 1.0], [w - 1.0, h - 1.0]])
    return model if bool(model.unproject(corners)[1].all()) else None


__all__ = ["FAMILIES", "LAYOUTS", "MIN_SIZE_HW", "Lens", "image_size_hw", "random_rig"]
