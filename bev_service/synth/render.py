"""Rendering one frame set of the synthetic world through a rig: per-camera images and label maps,
the true BEV grid and the oracle BEV.

For every pixel the ray of the camera model (``rays.CameraRays``) meets, nearest first, the ground
plane, the vehicle's own body, the actors near the vehicle, or the skyline; the surface it meets
gives the pixel's colour and its label (ground: the class of the ground map cell; actors: their
class; body, skyline and sky: background). The true BEV is the world's truth on every cell of the
rig's grid (ground classes and actor footprints, ego cells EGO); cells no camera sees are kept in
it and reported separately in ``unknown``. The oracle BEV is the projector's warp of the true
per-camera labels: what a perfect segmenter would give.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from bev_service.errors import CalibrationError
from bev_service.geometry.grid import EGO
from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Rig
from bev_service.geometry.tables import NO_CAMERA, check_input_size
from bev_service.geometry.transforms import apply_planar, rotation_z
from bev_service.synth import appearance as ap
from bev_service.synth import shading
from bev_service.synth.objects import Primitive
from bev_service.synth.raycast import parent_from_primitive_dirs, primitive_from_parent, ray_distance, surface_normal
from bev_service.synth.rays import SKY, SKYLINE, CameraRays, build_camera_rays, camera_origin_world, ego_parts
from bev_service.synth.world import PlacedActor, Skyline, SyntheticWorld, VehiclePose

FloatArray = NDArray[np.float64]
F32 = NDArray[np.float32]
ACTOR_RADIUS_M = 60.0


@dataclass(frozen=True)
class RenderedFrameSet:
    """One synchronised frame set and its truth. Images and labels are keyed by camera name in rig order."""

    camera_names: tuple[str, ...]
    images: dict[str, NDArray[np.uint8]]  # (h, w, 3) RGB, the decoded JPEG
    jpeg: dict[str, bytes]  # the JPEG files themselves
    labels: dict[str, NDArray[np.uint8]]  # (h, w) class ids
    body: dict[str, NDArray[np.bool_]]  # (h, w) pixels that see the vehicle's own body (labelled background)
    bev_truth: NDArray[np.uint8]  # (rows, cols) class ids, EGO on the footprint, complete everywhere else
    bev_oracle: NDArray[np.uint8]  # (rows, cols) the projector's warp of ``labels``
    unknown: NDArray[np.bool_]  # (rows, cols) cells no camera sees
    pose: VehiclePose
    time_s: float
    appearance: ap.Appearance
    scene: tuple[Primitive, ...] = field(repr=False)  # vehicle-frame primitives rendered, body first

    def label_stack(self) -> NDArray[np.uint8]:
        """(N, h, w) label maps in rig order."""
        return np.stack([self.labels[name] for name in self.camera_names])

    def body_stack(self) -> NDArray[np.bool_]:
        """(N, h, w) body masks in rig order."""
        return np.stack([self.body[name] for name in self.camera_names])


class Renderer:
    """Renders frame sets of any world through one rig at one image size (``scale`` of the rig's)."""

    def __init__(self, rig: Rig, *, scale: float = 1.0, ground_cell_m: float = 0.05) -> None:
        if not 0.05 <= scale <= 2.0:
            raise ValueError(f"scale must be between 0.05 and 2, got {scale}")
        for cam in rig.cameras:
            if cam.vehicle_from_camera is None:
                raise CalibrationError(
                    "the synthetic renderer needs every camera's pose (vehicle_from_camera); this camera is tied to "
                    "the ground by a homography only, which says nothing about what it sees above the ground",
                    camera=cam.name,
                    field="vehicle_from_camera",
                )
        self.rig = rig
        self.scale = scale
        # Each camera at ``scale`` of its own calibrated size (cameras of one rig may differ in size).
        self.image_sizes_hw = tuple(
            (max(1, round(h * scale)), max(1, round(w * scale))) for h, w in (c.image_size_hw for c in rig.cameras)
        )
        self.image_size_hw = self.image_sizes_hw[0]
        self.projector = BevProjector(rig)
        try:
            check_input_size(self.projector.tables, self.image_sizes_hw)
        except ValueError as exc:
            raise CalibrationError(f"cannot render at scale {scale}: {exc}") from exc
        self.body = ego_parts(rig)
        self.cameras = tuple(
            build_camera_rays(cam, size, self.body, ground_cell_m)
            for cam, size in zip(rig.cameras, self.image_sizes_hw, strict=True)
        )
        self.cell_centres = rig.grid.cell_centres()
        self.unknown = (self.projector.tables.owner == NO_CAMERA) & ~self.projector.tables.ego
        self.details = shading.DetailTextures.build()
        noise_rng = np.random.default_rng(11)
        self.last_timings_s: dict[str, float] = {}
        tallest, widest = (max(side) for side in zip(*self.image_sizes_hw, strict=True))
        self._noise = noise_rng.standard_normal((tallest + 32, widest + 32, 3), dtype=np.float32)

    def render(
        self,
        world: SyntheticWorld,
        pose: VehiclePose,
        *,
        time_s: float = 0.0,
        appearance: ap.Appearance | None = None,
        seed: int = 0,
    ) -> RenderedFrameSet:
        """The frame set seen from ``pose`` at ``time_s``; ``seed`` draws the appearance (unless
        given) and the sensor noise."""
        clock = _Clock()
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 17]))
        app = appearance if appearance is not None else ap.sample_appearance(rng, len(self.cameras))
        if len(app.camera_gains) != len(self.cameras):
            raise ValueError(f"appearance has {len(app.camera_gains)} camera gains, the rig {len(self.cameras)} cameras")
        actors, scene = self._scene(world, pose, time_s)
        sun = app.sun_direction(pose.yaw_rad)
        shadows = shading.shadow_map(list(scene), sun, app.shadow_softness_m)
        clock.lap("scene")
        images, jpeg, labels, body = {}, {}, {}, {}
        for i, cam in enumerate(self.cameras):
            radiance, labels[cam.name], body[cam.name] = self._camera(cam, world, pose, scene, app, sun, shadows, clock)
            offset = rng.integers(0, 32, size=2)
            h, w = self.image_sizes_hw[i]
            noise = self._noise[offset[0] : offset[0] + h, offset[1] : offset[1] + w]
            valid = cam.to_image(cam.valid)
            images[cam.name], jpeg[cam.name] = ap.finish_image(app, radiance, i, cam.edge_falloff, valid, noise, self.scale)
            clock.lap("finish")
        names = self.rig.camera_names
        maps = [labels[n] for n in names]
        oracle = self.projector.warp_labels(np.stack(maps) if len(set(self.image_sizes_hw)) == 1 else maps)
        truth = self.bev_truth(world, pose, actors)
        clock.lap("bev")
        self.last_timings_s = dict(clock.laps)
        return RenderedFrameSet(
            camera_names=names,
            images=images,
            jpeg=jpeg,
            labels=labels,
            body=body,
            bev_truth=truth,
            bev_oracle=oracle,
            unknown=self.unknown.copy(),
            pose=pose,
            time_s=float(time_s),
            appearance=app,
            scene=scene,
        )

    def _scene(self, world: SyntheticWorld, pose: VehiclePose, time_s: float) -> tuple[list[PlacedActor], tuple[Primitive, ...]]:
        """Actors near the vehicle, and every primitive to intersect in the vehicle frame, body first
        (the ray tables number the body's parts 0, 1, ...)."""
        actors = world.actors_near(pose, time_s, self.rig.ego, ACTOR_RADIUS_M)
        body = tuple(replace(p, colour=world.ego_colour) if p.style != "plain" else p for p in self.body)
        return actors, body + tuple(prim for placed in actors for prim in placed.primitives)

    # --- truth on the grid -----------------------------------------------------------------------

    def bev_truth(self, world: SyntheticWorld, pose: VehiclePose, actors: list[PlacedActor]) -> NDArray[np.uint8]:
        """Ground classes at every cell centre, actor footprints over them, EGO on the vehicle."""
        truth = world.ground.label_at(pose.world_from_vehicle_xy(self.cell_centres))
        grid = self.rig.grid
        for placed in actors:
            r = placed.actor.radius_m
            (r0, c0), (r1, c1) = grid.cell_from_vehicle_xy(
                np.array([[placed.x_m + r, placed.y_m + r], [placed.x_m - r, placed.y_m - r]])
            )
            rows = slice(max(0, int(np.floor(r0))), min(grid.rows, int(np.ceil(r1)) + 1))
            cols = slice(max(0, int(np.floor(c0))), min(grid.cols, int(np.ceil(c1)) + 1))
            if rows.start >= rows.stop or cols.start >= cols.stop:
                continue
            inside = footprint_contains(placed, self.cell_centres[rows, cols])
            truth[rows, cols][inside] = placed.actor.class_id
        truth[self.projector.tables.ego] = EGO
        return truth

    # --- one camera ------------------------------------------------------------------------------

    def _camera(
        self,
        cam: CameraRays,
        world: SyntheticWorld,
        pose: VehiclePose,
        scene: tuple[Primitive, ...],
        app: ap.Appearance,
        sun: FloatArray,
        shadows: F32,
        clock: _Clock,
    ) -> tuple[F32, NDArray[np.uint8], NDArray[np.bool_]]:
        t, hit = self._intersect(cam, scene)
        self._skyline(cam, world, pose, t, hit)
        clock.lap("intersect")
        radiance = np.zeros((t.size, 3), dtype=np.float32)
        labels = np.zeros(t.size, dtype=np.uint8)
        self._shade_ground(cam, world, pose, app, sun, shadows, radiance, labels)
        clock.lap("ground")
        self._shade_primitives(cam, scene, app, sun, t, hit, radiance, labels)
        self._reflect_body(cam, world, pose, app, scene, t, hit, radiance)
        self._shade_far(cam, world, pose, app, t, hit, radiance)
        ap.add_haze(app, radiance, t)
        sky = np.flatnonzero((hit == SKY) & cam.valid)
        radiance[sky] = self._sky(cam, pose, app, sky)
        labels[(hit == SKY) | (hit == SKYLINE)] = 0  # the body's parts are labelled background when shaded
        clock.lap("shade")
        body = (hit >= 0) & (hit < len(self.body))
        return cam.to_image(radiance), cam.to_image(labels), cam.to_image(body)

    def _intersect(self, cam: CameraRays, scene: tuple[Primitive, ...]) -> tuple[F32, NDArray[np.int16]]:
        """Distance to and index of the nearest surface per ray (GROUND, SKY or a scene index)."""
        t = cam.base_t.copy().reshape(cam.n_tiles, -1)
        hit = cam.base_hit.copy().reshape(cam.n_tiles, -1)
        for k in range(len(self.body), len(scene)):
            prim = scene[k]
            centre, radius = prim.bounding_sphere()
            tiles = cam.tiles_reaching(centre, radius)
            if tiles.size == 0:
                continue
            t_prim = ray_distance(prim, cam.origin, cam.dirs[tiles])
            t_old = t[tiles]
            closer = t_prim < t_old
            if closer.any():
                t[tiles] = np.where(closer, t_prim, t_old)
                hit[tiles] = np.where(closer, np.int16(k), hit[tiles])
        return t.reshape(-1), hit.reshape(-1)

    def _shade_ground(
        self,
        cam: CameraRays,
        world: SyntheticWorld,
        pose: VehiclePose,
        app: ap.Appearance,
        sun: FloatArray,
        shadows: F32,
        radiance: F32,
        labels: NDArray[np.uint8],
    ) -> None:
        """Colour and label of every pixel whose ray meets the ground (occluded ones are overwritten later)."""
        xy = pose.world_from_vehicle_xy(cam.ground_xy)
        ground = world.ground
        labels[cam.ground] = ground.label_at(xy)
        albedo = np.empty((len(xy), 3), dtype=np.float32)
        for level, members in enumerate(cam.ground_levels):
            if members.size == 0:
                continue
            if level == 0:  # near the camera: bilinear, with fine grain below the map's resolution
                near = xy[members]
                grain = (1.0 + 0.07 * self.details.grain_at(near))[:, None]
                albedo[members] = ground.colour_sampled(near, 0, bilinear=True) * grain
            else:
                albedo[members] = ground.colour_sampled(xy[members], level)
        shadow = shading.sample_shadow(shadows, cam.ground_xy)
        light = app.ambient + app.sun_strength * max(sun[2], 0.0) * (1.0 - 0.85 * shadow)
        radiance[cam.ground] = albedo * light[:, None].astype(np.float32)

    def _shade_primitives(
        self,
        cam: CameraRays,
        scene: tuple[Primitive, ...],
        app: ap.Appearance,
        sun: FloatArray,
        t: F32,
        hit: NDArray[np.int16],
        radiance: F32,
        labels: NDArray[np.uint8],
    ) -> None:
        on_prim = np.flatnonzero(hit >= 0)
        if on_prim.size == 0:
            return
        order = on_prim[np.argsort(hit[on_prim], kind="stable")]
        kinds, starts = np.unique(hit[order], return_index=True)
        ends = np.append(starts[1:], order.size)
        dirs = cam.dirs.reshape(-1, 3)
        for k, a, b in zip(kinds, starts, ends, strict=True):
            index = order[a:b]
            prim = scene[int(k)]
            points = cam.origin + t[index].astype(np.float64)[:, None] * dirs[index].astype(np.float64)
            points_prim = primitive_from_parent(prim, points)
            normal_prim = surface_normal(prim, points_prim)
            normal = parent_from_primitive_dirs(prim, normal_prim)
            albedo = shading.surface_albedo(prim, points_prim, normal_prim)
            light = app.ambient * (0.75 + 0.25 * normal[:, 2]) + app.sun_strength * np.maximum(normal @ sun, 0.0)
            radiance[index] = albedo * light[:, None].astype(np.float32)
            labels[index] = prim.class_id

    def _reflect_body(
        self,
        cam: CameraRays,
        world: SyntheticWorld,
        pose: VehiclePose,
        app: ap.Appearance,
        scene: tuple[Primitive, ...],
        t: F32,
        hit: NDArray[np.int16],
        radiance: F32,
    ) -> None:
        """Mirror the sky and the ground in the car's own paint and glass (Schlick's Fresnel): what a real
        camera sees of its car is mostly reflections of the road, which a network must not take for road."""
        shiny = [k for k in range(len(self.body)) if scene[k].style in ("car_body", "car_cabin")]
        index = np.flatnonzero(np.isin(hit, shiny))
        if index.size == 0 or app.body_gloss <= 0.0:
            return
        d = cam.dirs.reshape(-1, 3)[index].astype(np.float64)
        points = cam.origin + t[index].astype(np.float64)[:, None] * d
        normal = np.empty_like(points)
        for k in shiny:
            mine = hit[index] == k
            prim = scene[k]
            local = primitive_from_parent(prim, points[mine])
            normal[mine] = parent_from_primitive_dirs(prim, surface_normal(prim, local))
        cos = np.abs(np.einsum("ij,ij->i", d, normal))
        r = d - 2.0 * np.einsum("ij,ij->i", d, normal)[:, None] * normal  # the mirrored ray
        fresnel = app.body_gloss * (0.25 + 0.75 * (1.0 - cos) ** 5)
        mirrored = np.empty((index.size, 3), dtype=np.float32)
        up = r[:, 2] > 0.0
        if up.any():
            mirrored[up] = ap.sky_colour(app, r[up, 2].astype(np.float32), np.full(int(up.sum()), 0.3, dtype=np.float32))
        down = ~up
        if down.any():
            with np.errstate(divide="ignore"):
                reach = np.minimum(-points[down, 2] / np.minimum(r[down, 2], -1e-6), 60.0)
            ground_xy = points[down, :2] + reach[:, None] * r[down, :2]
            albedo = world.ground.colour_sampled(pose.world_from_vehicle_xy(ground_xy), 2).astype(np.float32)
            mirrored[down] = albedo * np.float32(app.ambient + app.sun_strength * 0.5)
        f = fresnel[:, None].astype(np.float32)
        radiance[index] = radiance[index] * (1.0 - f) + mirrored * f

    def _skyline(self, cam: CameraRays, world: SyntheticWorld, pose: VehiclePose, t: F32, hit: NDArray[np.int16]) -> None:
        """Mark far rays that meet the skyline's buildings or trees before anything else (hit SKYLINE)."""
        sky = world.skyline
        index = cam.far
        origin = camera_origin_world(cam, np.array([pose.x_m, pose.y_m]), pose.yaw_rad)
        d = _world_from_vehicle_dirs(cam.dirs.reshape(-1, 3)[index].astype(np.float64), pose.yaw_rad)
        qa = d[:, 0] ** 2 + d[:, 1] ** 2
        qb = 2 * (origin[0] * d[:, 0] + origin[1] * d[:, 1])
        qc = origin[0] ** 2 + origin[1] ** 2 - sky.radius_m**2  # < 0: the camera is inside the circle
        with np.errstate(divide="ignore", invalid="ignore"):
            t_wall = (-qb + np.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
        z = origin[2] + t_wall * d[:, 2]
        x, y = origin[0] + t_wall * d[:, 0], origin[1] + t_wall * d[:, 1]
        bins = _skyline_bins(sky, x, y)
        wall = np.isfinite(t_wall) & (z >= 0) & (z <= sky.heights_m[bins]) & (t_wall < t[index])
        t[index[wall]] = t_wall[wall]
        hit[index[wall]] = SKYLINE

    def _shade_far(
        self,
        cam: CameraRays,
        world: SyntheticWorld,
        pose: VehiclePose,
        app: ap.Appearance,
        t: F32,
        hit: NDArray[np.int16],
        radiance: F32,
    ) -> None:
        index = np.flatnonzero(hit == SKYLINE)
        if index.size == 0:
            return
        origin = camera_origin_world(cam, np.array([pose.x_m, pose.y_m]), pose.yaw_rad)
        d = _world_from_vehicle_dirs(cam.dirs.reshape(-1, 3)[index].astype(np.float64), pose.yaw_rad)
        p = origin + t[index].astype(np.float64)[:, None] * d
        bins = _skyline_bins(world.skyline, p[:, 0], p[:, 1])
        arc = np.arctan2(p[:, 1], p[:, 0]) * world.skyline.radius_m
        albedo = shading.skyline_albedo(world.skyline, bins, arc, p[:, 2])
        normal = -p[:, :2] / np.linalg.norm(p[:, :2], axis=1, keepdims=True)
        sun_world = app.sun_direction(0.0)
        light = app.ambient + app.sun_strength * np.maximum(normal @ sun_world[:2], 0.0)
        radiance[index] = albedo * light[:, None].astype(np.float32)

    def _sky(self, cam: CameraRays, pose: VehiclePose, app: ap.Appearance, index: NDArray[np.intp]) -> F32:
        d = _world_from_vehicle_dirs(cam.dirs.reshape(-1, 3)[index].astype(np.float64), pose.yaw_rad)
        up = np.maximum(d[:, 2], 0.03)
        cloud_xy = d[:, :2] / up[:, None] * 1500.0 + np.array([pose.x_m, pose.y_m])
        return ap.sky_colour(app, d[:, 2].astype(np.float32), self.details.clouds_at(cloud_xy))


def _world_from_vehicle_dirs(d: FloatArray, yaw_rad: float) -> FloatArray:
    return apply_planar(rotation_z(yaw_rad), d)


def _skyline_bins(sky: Skyline, x: FloatArray, y: FloatArray) -> NDArray[np.intp]:
    n = sky.heights_m.size
    azimuth = np.nan_to_num(np.arctan2(y, x))
    return np.clip(((azimuth + np.pi) / (2 * np.pi) * n).astype(np.intp), 0, n - 1)


def footprint_contains(placed: PlacedActor, xy: FloatArray) -> NDArray[np.bool_]:
    """Which vehicle-frame ground points (..., 2) lie in the actor's footprint."""
    f = placed.actor.footprint
    dx, dy = xy[..., 0] - placed.x_m, xy[..., 1] - placed.y_m
    if f.circle:
        return np.asarray(dx * dx + dy * dy <= f.half_x_m**2)
    actor_from_vehicle = rotation_z(placed.yaw_rad).T
    xy_actor = apply_planar(actor_from_vehicle, np.stack([dx, dy], axis=-1))
    return np.asarray((np.abs(xy_actor[..., 0]) <= f.half_x_m) & (np.abs(xy_actor[..., 1]) <= f.half_y_m))


class _Clock:
    """Seconds spent per stage of one render (summed over cameras), for the benchmark."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = self.laps.get(stage, 0.0) + now - self._last
        self._last = now


_RENDERERS: OrderedDict[tuple[str, float], Renderer] = OrderedDict()
_LOCK = threading.Lock()


def renderer_for(rig: Rig, scale: float = 1.0) -> Renderer:
    """A cached renderer per (rig fingerprint, scale): the ray tables take a second to build."""
    key = (rig.fingerprint, float(scale))
    with _LOCK:
        found = _RENDERERS.get(key)
        if found is not None:
            _RENDERERS.move_to_end(key)
            return found
    made = Renderer(rig, scale=scale)
    with _LOCK:
        _RENDERERS[key] = made
        while len(_RENDERERS) > 4:
            _RENDERERS.popitem(last=False)
    return made


def render_frame_set(
    rig: Rig,
    world: SyntheticWorld,
    pose: VehiclePose,
    *,
    time_s: float = 0.0,
    scale: float = 1.0,
    appearance: ap.Appearance | None = None,
    seed: int = 0,
) -> RenderedFrameSet:
    """Render one frame set (see ``Renderer.render``) with a cached renderer for the rig and scale."""
    return renderer_for(rig, scale).render(world, pose, time_s=time_s, appearance=appearance, seed=seed)


__all__ = ["RenderedFrameSet", "Renderer", "footprint_contains", "render_frame_set", "renderer_for"]
