"""Per-camera ray tables, built once per rig and image size: every pixel's ray from the camera
model's ``unproject``, in the vehicle frame, where it meets the ground, how far it reaches, and
which of the vehicle's own body parts it hits. None of this changes between frames: the vehicle
stays level, so each pixel sees the same vehicle-frame ground point in every frame.

Rays are stored tile by tile (tiles of ``TILE`` x ``TILE`` pixels, index (tile, pixel in tile)) so
that a primitive is intersected only with the tiles whose cone of rays can reach it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bev_service.errors import CalibrationError
from bev_service.geometry.rig import Camera, Rig
from bev_service.geometry.transforms import apply_planar, rotation_z
from bev_service.synth import objects as obj
from bev_service.synth.raycast import primitive_from_parent, ray_distance

FloatArray = NDArray[np.float64]
TILE = 16
SKY = -1  # hit code: the ray meets nothing (or the pixel is outside the lens's image)
GROUND = -2
SKYLINE = -3
FAR_M = 40.0  # rays that reach further than this may meet the skyline
BODY_SETBACK_M = 0.15  # lenses sit this far out from the body (mirror housings, grille, tailgate handle)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraRays:
    """Everything per pixel that does not change between frames; arrays are flat over (tile, pixel)."""

    name: str
    size_hw: tuple[int, int]
    tiles_yx: tuple[int, int]
    origin: FloatArray  # (3,) camera centre in the vehicle frame
    dirs: NDArray[np.float32]  # (T, P, 3) unit rays in the vehicle frame, NaN outside the image circle
    valid: NDArray[np.bool_]  # (T * P,)
    tile_axis: FloatArray  # (T, 3) mean ray of each tile
    tile_radius: FloatArray  # (T,) largest angle (rad) between the mean and a ray of the tile; -1 when empty
    ground: NDArray[np.intp]  # indices of rays that meet the ground plane
    ground_xy: FloatArray  # (G, 2) where they meet it, vehicle frame
    ground_levels: tuple[NDArray[np.intp], ...]  # positions in ``ground`` per texture mip level
    base_t: NDArray[np.float32]  # (T * P,) distance to the ground or the vehicle's body, inf for sky
    base_hit: NDArray[np.int16]  # (T * P,) GROUND, SKY or the index of the body part hit
    far: NDArray[np.intp]  # indices of rays that reach further than FAR_M
    edge_falloff: NDArray[np.float32]  # (h, w): 0 on the optical axis, 1 at the edge of the field of view

    @property
    def n_tiles(self) -> int:
        return int(self.dirs.shape[0])

    def to_image(self, flat: NDArray[Any]) -> NDArray[Any]:
        """(T * P, ...) tile-ordered values to an (h, w, ...) image."""
        ty, tx = self.tiles_yx
        h, w = self.size_hw
        tail = flat.shape[1:]
        grid = flat.reshape(ty, tx, TILE, TILE, *tail).swapaxes(1, 2).reshape(ty * TILE, tx * TILE, *tail)
        return grid[:h, :w]

    def tiles_reaching(self, centre: FloatArray, radius_m: float) -> NDArray[np.intp]:
        """Tiles with a ray that may pass within ``radius_m`` of ``centre`` (conservative cone test)."""
        v = centre - self.origin
        dist = float(np.linalg.norm(v))
        if dist <= radius_m + 1e-6:
            return np.flatnonzero(self.tile_radius >= 0)
        alpha = np.arcsin(radius_m / dist)
        angle = np.arccos(np.clip(self.tile_axis @ (v / dist), -1.0, 1.0))
        return np.flatnonzero((angle <= alpha + self.tile_radius) & (self.tile_radius >= 0))


def tile_order(image: NDArray[Any], tiles_yx: tuple[int, int]) -> NDArray[Any]:
    """(h, w, ...) image, padded with NaN/zero to whole tiles, to (T * P, ...) tile order."""
    ty, tx = tiles_yx
    h, w = image.shape[:2]
    tail = image.shape[2:]
    padded = np.zeros((ty * TILE, tx * TILE, *tail), dtype=image.dtype)
    if np.issubdtype(image.dtype, np.floating):
        padded[...] = np.nan
    padded[:h, :w] = image
    return padded.reshape(ty, TILE, tx, TILE, *tail).swapaxes(1, 2).reshape(ty * tx * TILE * TILE, *tail)


def pixel_rays(camera: Camera, size_hw: tuple[int, int]) -> tuple[FloatArray, NDArray[np.bool_]]:
    """(h, w, 3) unit rays in the camera frame for an image of ``size_hw`` (a scaled copy of the
    calibrated image: pixel centres map to calibrated coordinates (i + 0.5) / scale - 0.5)."""
    h, w = size_hw
    cal_h, cal_w = camera.image_size_hw
    u = (np.arange(w) + 0.5) * (cal_w / w) - 0.5
    v = (np.arange(h) + 0.5) * (cal_h / h) - 0.5
    uu, vv = np.meshgrid(u, v)
    rays, valid = camera.model.unproject(np.stack([uu, vv], axis=-1))
    return rays, valid


def ego_parts(rig: Rig, colour: obj.Colour = (128.0, 128.0, 128.0)) -> tuple[obj.Primitive, ...]:
    """The rig's car body, its footprint shrunk where needed so that every camera sits outside it;
    no body when a camera would still be inside (a roof camera, say)."""
    (x0, x1), (y0, y1) = rig.ego.x_range_m, rig.ego.y_range_m
    full = obj.ego_body((x0, x1), (y0, y1), colour)
    for cam in rig.cameras:
        assert cam.vehicle_from_camera is not None
        x, y = cam.vehicle_from_camera[:2, 3]
        # a camera over the footprint but above the body's boxes (behind the windscreen, over the bonnet) keeps the whole car
        if x0 < x < x1 and y0 < y < y1 and _inside_any(full, cam.vehicle_from_camera[:3, 3]):
            gaps = {"x1": x1 - x, "x0": x - x0, "y1": y1 - y, "y0": y - y0}
            face = min(gaps, key=lambda k: gaps[k])
            x1 = x - BODY_SETBACK_M if face == "x1" else x1
            x0 = x + BODY_SETBACK_M if face == "x0" else x0
            y1 = y - BODY_SETBACK_M if face == "y1" else y1
            y0 = y + BODY_SETBACK_M if face == "y0" else y0
    parts = obj.ego_body((x0, x1), (y0, y1), colour)
    for cam in rig.cameras:
        assert cam.vehicle_from_camera is not None
        if _inside_any(parts, cam.vehicle_from_camera[:3, 3]):
            log.warning("camera %r sits inside the vehicle body model: rendering without the body", cam.name)
            return ()
    return parts


def _inside_any(parts: tuple[obj.Primitive, ...], point: FloatArray) -> bool:
    return any((np.abs(primitive_from_parent(part, point)) < np.asarray(part.size)).all() for part in parts)


def build_camera_rays(camera: Camera, size_hw: tuple[int, int], body: tuple[obj.Primitive, ...], cell_m: float) -> CameraRays:
    """The ray table of one camera at image size ``size_hw``; ``cell_m`` is the ground texture's cell."""
    if camera.vehicle_from_camera is None:
        raise CalibrationError(
            "the synthetic renderer needs the camera's pose; this camera is tied to the ground by a homography only",
            camera=camera.name,
            field="vehicle_from_camera",
        )
    h, w = size_hw
    tiles_yx = (-(-h // TILE), -(-w // TILE))
    rays_cam, valid_img = pixel_rays(camera, size_hw)
    rotation = camera.vehicle_from_camera[:3, :3]
    origin = camera.vehicle_from_camera[:3, 3].copy()
    dirs_img = np.where(valid_img[..., None], rays_cam @ rotation.T, np.nan)
    dirs = tile_order(dirs_img, tiles_yx)  # (N, 3)
    valid = tile_order(valid_img, tiles_yx)
    ground_xy_img, t_img = _ground_hits(origin, dirs_img)
    t_ground = tile_order(t_img, tiles_yx)
    t_ground[~np.isfinite(t_ground)] = np.inf
    base_t, base_hit = t_ground.astype(np.float32), np.where(np.isfinite(t_ground), GROUND, SKY).astype(np.int16)
    for k, part in enumerate(body):
        t_part = ray_distance(part, origin, dirs)
        closer = t_part < base_t
        base_t[closer], base_hit[closer] = t_part[closer], k
    ground = np.flatnonzero(base_hit == GROUND)  # the body hides the rest for good
    levels = _mip_levels(ground_xy_img, cell_m)
    ground_level = tile_order(levels.astype(np.float32), tiles_yx)[ground]
    n_tiles = tiles_yx[0] * tiles_yx[1]
    tile_dirs = dirs.reshape(n_tiles, TILE * TILE, 3)
    axis, radius = _tile_cones(tile_dirs)
    return CameraRays(
        name=camera.name,
        size_hw=(h, w),
        tiles_yx=tiles_yx,
        origin=origin,
        dirs=tile_dirs.astype(np.float32),
        valid=valid,
        tile_axis=axis,
        tile_radius=radius,
        ground=ground,
        ground_xy=tile_order(ground_xy_img, tiles_yx)[ground],
        ground_levels=tuple(np.flatnonzero(ground_level == k) for k in range(int(np.nanmax(levels, initial=0)) + 1)),
        base_t=base_t,
        base_hit=base_hit,
        far=np.flatnonzero(valid & (base_t > FAR_M)),
        edge_falloff=_edge_falloff(rays_cam, valid_img),
    )


def _ground_hits(origin: FloatArray, dirs: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Where rays (h, w, 3) from ``origin`` meet z = 0: (h, w, 2) points and (h, w) distances (NaN: never)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -origin[2] / dirs[..., 2]
    t = np.where((dirs[..., 2] < -1e-6) & (t > 0), t, np.nan)
    return origin[:2] + t[..., None] * dirs[..., :2], t


def _mip_levels(ground_xy: FloatArray, cell_m: float) -> FloatArray:
    """Texture level per pixel: 0 where a pixel covers under ~1.4 ground cells (sampled bilinear),
    else log2 of its footprint in cells (nearest cell of that mip level); NaN off the ground."""
    dx_u = np.diff(ground_xy, axis=1, append=np.nan)
    dx_v = np.diff(ground_xy, axis=0, append=np.nan)
    du = np.hypot(dx_u[..., 0], dx_u[..., 1])
    dv = np.hypot(dx_v[..., 0], dx_v[..., 1])
    du = np.where(np.isfinite(du), du, np.nan_to_num(dv, nan=cell_m))
    dv = np.where(np.isfinite(dv), dv, du)
    footprint = np.sqrt(du * np.maximum(du, dv) ** 0.5 * dv**0.5)  # between the mean and the longer side
    levels = np.clip(np.floor(np.log2(np.maximum(footprint, 1e-9) / cell_m) + 0.5), 0, 4)
    return np.where(np.isfinite(ground_xy[..., 0]), levels, np.nan)


def _tile_cones(tile_dirs: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Mean ray of each tile and the largest angle from it to any of the tile's rays."""
    finite = np.isfinite(tile_dirs[..., 0])
    summed = np.where(finite[..., None], tile_dirs, 0.0).sum(axis=1)
    norm = np.linalg.norm(summed, axis=-1, keepdims=True)
    axis = summed / np.where(norm > 0, norm, 1.0)
    cos = np.einsum("tpc,tc->tp", np.where(finite[..., None], tile_dirs, 0.0), axis)
    cos = np.where(finite, cos, 1.0)
    radius = np.arccos(np.clip(cos.min(axis=1), -1.0, 1.0)) + 1e-3
    return axis, np.where(finite.any(axis=1), radius, -1.0)


def _edge_falloff(rays_cam: FloatArray, valid: NDArray[np.bool_]) -> NDArray[np.float32]:
    theta = np.arccos(np.clip(rays_cam[..., 2], -1.0, 1.0))
    theta_max = float(np.nanmax(np.where(valid, theta, np.nan))) if valid.any() else 1.0
    return np.where(valid, (theta / theta_max) ** 2, 1.0).astype(np.float32)


def camera_origin_world(rays: CameraRays, pose_xy: FloatArray, yaw_rad: float) -> FloatArray:
    """The camera centre in the world frame for a vehicle at ``pose_xy`` heading ``yaw_rad``."""
    return apply_planar(rotation_z(yaw_rad), rays.origin, pose_xy)
