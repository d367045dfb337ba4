"""Lighting, sky, haze and the camera's own marks on an image: exposure and white balance per camera,
vignetting, lens blur, sensor noise and JPEG compression. All drawn per frame set from a seed."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Appearance:
    """Conditions of one frame set. The sun is given in the world frame (azimuth from world x)."""

    sun_azimuth_rad: float
    sun_elevation_rad: float
    sun_strength: float  # direct light on a surface facing the sun, relative to albedo
    ambient: float  # sky light on every surface
    shadow_softness_m: float
    exposure: float
    camera_gains: tuple[float, ...]  # per camera, in rig order: auto-exposure differences
    white_balance: tuple[float, float, float]
    haze_visibility_m: float
    sky_zenith: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    cloud_cover: float
    vignetting: float  # fraction of light lost at the edge of the field of view
    blur_sigma_px: float  # at the rig's calibrated resolution
    noise_sigma: float  # grey levels, at mid grey
    jpeg_quality: int
    body_gloss: float = 0.0  # share of the car's own paint that mirrors the sky and the ground (clear coat)

    def as_dict(self) -> dict[str, object]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def sun_direction(self, yaw_rad: float) -> FloatArray:
        """Unit vector towards the sun in the vehicle frame of a vehicle heading ``yaw_rad``."""
        azimuth = self.sun_azimuth_rad - yaw_rad
        c = np.cos(self.sun_elevation_rad)
        return np.array([c * np.cos(azimuth), c * np.sin(azimuth), np.sin(self.sun_elevation_rad)])


def sample_appearance(rng: np.random.Generator, n_cameras: int) -> Appearance:
    """Random conditions from overcast noon to low evening sun, clean to noisy cameras."""
    overcast = float(rng.random())
    sun = float(rng.uniform(0.25, 0.95)) * (1.0 - 0.7 * overcast)
    warm = float(rng.uniform(-1.0, 1.0))
    zenith = np.array([70.0, 120.0, 200.0]) * (1 - 0.5 * overcast) + np.array([170.0, 175.0, 180.0]) * 0.5 * overcast
    horizon = np.array([185.0, 200.0, 215.0]) + rng.uniform(-15, 15, size=3)
    return Appearance(
        sun_azimuth_rad=float(rng.uniform(-np.pi, np.pi)),
        sun_elevation_rad=float(np.deg2rad(rng.uniform(12.0, 70.0))),
        sun_strength=sun,
        ambient=float(rng.uniform(0.45, 0.75)),
        shadow_softness_m=float(rng.uniform(0.05, 0.4)),
        exposure=float(rng.uniform(0.8, 1.25)),
        camera_gains=tuple(float(g) for g in rng.uniform(0.9, 1.1, size=n_cameras)),
        white_balance=(1.0 + 0.05 * warm, 1.0, 1.0 - 0.06 * warm),
        haze_visibility_m=float(rng.uniform(120.0, 900.0)),
        sky_zenith=tuple(float(v) for v in zenith),  # type: ignore[arg-type]
        sky_horizon=tuple(float(v) for v in np.clip(horizon, 0, 255)),  # type: ignore[arg-type]
        cloud_cover=float(np.clip(overcast + rng.uniform(-0.2, 0.2), 0.0, 1.0)),
        vignetting=float(rng.uniform(0.0, 0.55)),
        blur_sigma_px=float(rng.choice([0.0, rng.uniform(0.3, 1.3)], p=[0.3, 0.7])),
        noise_sigma=float(rng.uniform(0.5, 5.0)),
        jpeg_quality=int(rng.integers(55, 96)),
        body_gloss=float(rng.uniform(0.05, 0.6)),
    )


def sky_colour(app: Appearance, dir_z: F32, clouds: F32) -> F32:
    """(n, 3) sky radiance for rays with vertical component ``dir_z`` and cloud density in [0, 1]."""
    up = np.sqrt(np.clip(dir_z, 0.0, 1.0))[:, None]
    zenith = np.asarray(app.sky_zenith, dtype=np.float32)
    horizon = np.asarray(app.sky_horizon, dtype=np.float32)
    blue = horizon + (zenith - horizon) * up
    cloud = np.float32(225.0) * (0.75 + 0.25 * up)
    amount = np.clip(clouds * (0.4 + app.cloud_cover), 0.0, 1.0)[:, None]
    return np.asarray(blue * (1 - amount) + cloud * amount, dtype=np.float32)


def add_haze(app: Appearance, rgb: F32, distance_m: F32) -> None:
    """Blend towards the horizon colour with distance (Koschmieder's law), in place."""
    fog = 1.0 - np.exp(-np.minimum(distance_m, 1e5) / app.haze_visibility_m)
    rgb += (np.asarray(app.sky_horizon, dtype=np.float32) - rgb) * fog[:, None].astype(np.float32)


def finish_image(
    app: Appearance,
    radiance: F32,
    camera_index: int,
    edge_falloff: F32,
    valid: NDArray[np.bool_],
    noise: F32,
    scale: float,
) -> tuple[NDArray[np.uint8], bytes]:
    """Radiance (h, w, 3) to the camera's JPEG: exposure, white balance, vignetting (``edge_falloff``
    is 0 on the optical axis and 1 at the edge of the field of view), lens blur, noise, quantisation,
    compression. Returns the decoded image and its JPEG bytes (decoding the bytes gives the image)."""
    gain = app.exposure * app.camera_gains[camera_index]
    balance = np.asarray(app.white_balance, dtype=np.float32) * np.float32(gain)
    image = radiance * balance
    image *= (1.0 - app.vignetting * edge_falloff)[..., None]
    image[~valid] = 0.0
    sigma = app.blur_sigma_px * scale
    if sigma > 0.15:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image += noise * (app.noise_sigma * (0.5 + image / 255.0))
    np.maximum(image, 0.0, out=image)
    rgb = np.asarray(cv2.convertScaleAbs(image), dtype=np.uint8)  # rounds and saturates to uint8
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, app.jpeg_quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    data = buf.tobytes()
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("JPEG decoding failed")
    return np.ascontiguousarray(decoded[..., ::-1], dtype=np.uint8), data
