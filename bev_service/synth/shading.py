"""Surface colours of the primitives (paint, glass, clothes, stripes, lights), ground shadows, the
skyline's facades, and small tiling textures for fine ground grain and clouds."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from bev_service.geometry.transforms import apply_planar, rotation_z
from bev_service.synth.objects import Primitive
from bev_service.synth.textures import value_noise
from bev_service.synth.world import Skyline

FloatArray = NDArray[np.float64]
F32 = NDArray[np.float32]
SHADOW_EXTENT_M = 40.0
SHADOW_CELL_M = 0.1


def surface_albedo(prim: Primitive, local: FloatArray, normal: FloatArray) -> F32:
    """(n, 3) albedo at surface points of ``prim`` (both in its own frame)."""
    n = local.shape[0]
    colour = np.broadcast_to(np.asarray(prim.colour, dtype=np.float32), (n, 3)).copy()
    second = np.asarray(prim.colour2, dtype=np.float32)
    if prim.style == "car_cabin":
        glass = normal[:, 2] < 0.5  # the sides and ends are windows, the roof is paint
        colour[glass] = second
    elif prim.style == "car_body":
        _car_lights(colour, prim, local, normal)
    elif prim.style == "person":
        legs = local[:, 2] < 0.47 * prim.size[2]
        colour[legs] = second
    elif prim.style == "cone":
        z = local[:, 2] / prim.size[2]
        colour[(z > 0.42) & (z < 0.6)] = second
    elif prim.style == "striped":
        band = np.floor((local[:, 0] + local[:, 2]) / 0.35).astype(np.int64) % 2 == 0
        colour[band] = second
    elif prim.style in ("facade", "shopfront"):
        _facade(colour, prim, local, normal)
    elif prim.style == "foliage":
        leafy = (np.floor(local[:, 0] * 5.3) * 7 + np.floor(local[:, 1] * 4.1) * 3 + np.floor(local[:, 2] * 4.7) * 13) % 7
        colour *= (0.6 + 0.1 * leafy)[:, None].astype(np.float32)
    elif prim.style == "fence":
        along = local[:, 0] if np.abs(normal[:, 0]).mean() < 0.5 else local[:, 1]
        slat = (along % 0.14) < 0.05
        colour[~slat] *= 0.45  # the gaps between the slats: what is behind, in shade
    return colour


def _facade(colour: F32, prim: Primitive, local: FloatArray, normal: FloatArray) -> None:
    """Floors of windows (3.2 m a floor, a window every 2.6 m); a shop front of wide glass at street level."""
    z = local[:, 2] + prim.size[2]  # height above the box's base
    along = np.where(np.abs(normal[:, 0]) > 0.5, local[:, 1], local[:, 0])
    wall = np.abs(normal[:, 2]) < 0.5
    window = wall & ((z % 3.2) > 1.0) & ((z % 3.2) < 2.3) & ((along % 2.6) > 0.7) & ((along % 2.6) < 1.9) & (z > 3.2)
    if prim.style == "shopfront":
        window |= wall & (z > 0.4) & (z < 2.8) & ((along % 4.0) > 0.3)
    else:
        window |= wall & ((z % 3.2) > 1.0) & ((z % 3.2) < 2.3) & ((along % 2.6) > 0.7) & ((along % 2.6) < 1.9)
    glass = np.asarray(prim.colour2, dtype=np.float32)
    shine = 1.0 + 0.35 * np.sin(along[window] * 0.9 + z[window] * 0.4)  # skies and streets reflected in the panes
    colour[window] = glass * shine[:, None].astype(np.float32)
    colour[~wall] *= 0.7  # flat roofs


def _car_lights(colour: F32, prim: Primitive, local: FloatArray, normal: FloatArray) -> None:
    _, hy, hz = prim.size
    upper = local[:, 2] > 0.25 * hz
    side_lamp = (np.abs(local[:, 1]) > 0.55 * hy) & (np.abs(local[:, 1]) < 0.92 * hy) & upper
    colour[(normal[:, 0] > 0.5) & side_lamp] = (235.0, 235.0, 215.0)
    colour[(normal[:, 0] < -0.5) & side_lamp] = (170.0, 20.0, 20.0)
    plate = (np.abs(local[:, 1]) < 0.2) & (np.abs(local[:, 2]) < 0.15 * hz) & (np.abs(normal[:, 0]) > 0.5)
    colour[plate] = (225.0, 225.0, 225.0)


def _silhouette(prim: Primitive) -> FloatArray:
    """(m, 3) points whose convex hull holds the primitive, in the frame its centre is given in."""
    if prim.shape == "frustum":
        r0, r1, h = prim.size
        a = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        ring = np.stack([np.cos(a), np.sin(a)], axis=1)
        points_prim = np.vstack([np.c_[ring * r0, np.zeros(12)], np.c_[ring * r1, np.full(12, h)]])
    else:
        half = np.asarray(prim.size) if prim.shape == "box" else np.full(3, prim.size[0])
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
        points_prim = signs * half
    parent_from_prim = rotation_z(prim.yaw_rad)
    return apply_planar(parent_from_prim, points_prim) + np.asarray(prim.centre)


def shadow_map(prims: list[Primitive], sun: FloatArray, softness_m: float) -> F32:
    """(n, n) shadow density in [0, 1] on the ground around the vehicle (vehicle frame, x along
    columns, y along rows, from -SHADOW_EXTENT_M): each primitive's hull projected along the sun."""
    n = round(2 * SHADOW_EXTENT_M / SHADOW_CELL_M)
    mask = np.zeros((n, n), dtype=np.uint8)
    if sun[2] < 0.05:
        return mask.astype(np.float32)
    along = sun[:2] / sun[2]
    for prim in prims:
        pts = _silhouette(prim)
        ground = pts[:, :2] - pts[:, 2:3] * along
        cells = (ground + SHADOW_EXTENT_M) / SHADOW_CELL_M - 0.5
        hull = cv2.convexHull(np.round(cells * 16).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255, cv2.LINE_AA, 4)
    sigma = max(softness_m / SHADOW_CELL_M, 0.5)
    return np.asarray(cv2.GaussianBlur(mask, (0, 0), sigma), dtype=np.float32) * np.float32(1 / 255)


def sample_shadow(shadow: F32, xy: FloatArray) -> F32:
    n = shadow.shape[0]
    col = np.clip(((xy[:, 0] + SHADOW_EXTENT_M) / SHADOW_CELL_M).astype(np.intp), 0, n - 1)
    row = np.clip(((xy[:, 1] + SHADOW_EXTENT_M) / SHADOW_CELL_M).astype(np.intp), 0, n - 1)
    return np.asarray(shadow.reshape(-1).take(row * n + col))


@dataclass(frozen=True)
class DetailTextures:
    """Tiling textures: fine ground grain (1 cm cells, 5.12 m period) and clouds (40 m cells)."""

    grain: F32  # (512, 512), zero mean
    clouds: F32  # (256, 256), in [0, 1]

    @staticmethod
    def build(seed: int = 7) -> DetailTextures:
        rng = np.random.default_rng(seed)
        grain = value_noise(rng, (512, 512), 1.5) * 0.7 + rng.standard_normal((512, 512), dtype=np.float32) * 0.5
        clouds = value_noise(rng, (256, 256), 24.0) + 0.5 * value_noise(rng, (256, 256), 6.0)
        clouds = np.clip((clouds - 0.2) * 0.8, 0.0, 1.0)
        return DetailTextures(grain=grain.astype(np.float32), clouds=clouds.astype(np.float32))

    def grain_at(self, xy: FloatArray) -> F32:
        col = (np.floor(xy[:, 0] / 0.01).astype(np.int64)) & 511
        row = (np.floor(xy[:, 1] / 0.01).astype(np.int64)) & 511
        return np.asarray(self.grain.reshape(-1).take(row * 512 + col))

    def clouds_at(self, xy: FloatArray) -> F32:
        col = (np.floor(xy[:, 0] / 40.0).astype(np.int64)) & 255
        row = (np.floor(xy[:, 1] / 40.0).astype(np.int64)) & 255
        return np.asarray(self.clouds.reshape(-1).take(row * 256 + col))


def skyline_albedo(skyline: Skyline, bins: NDArray[np.intp], arc_m: FloatArray, z_m: FloatArray) -> F32:
    """(n, 3) facade colours with rows of windows, or tree lines with leafy noise."""
    colour = skyline.colours[bins].copy()
    window = ((z_m % 3.2) > 1.0) & ((z_m % 3.2) < 2.3) & ((arc_m % 2.6) > 0.7) & ((arc_m % 2.6) < 1.9)
    trees = skyline.trees[bins]
    colour[window & ~trees] = (70.0, 85.0, 105.0)
    leafy = 0.75 + 0.5 * ((np.floor(arc_m * 1.7) * 7 + np.floor(z_m * 2.3) * 13) % 5) / 5.0
    colour[trees] *= leafy[trees, None].astype(np.float32)
    return colour
