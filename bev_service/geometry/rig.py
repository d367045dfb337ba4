"""A calibrated surround-view rig: cameras with their models and their tie to the ground.

A camera is tied to the ground either by its pose ``vehicle_from_camera`` or by a ground homography
from its undistorted image to the vehicle's ground plane. Both answer the one question the projector
asks: which pixel of the camera's (distorted, calibrated-resolution) image sees a ground point.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bev_service.geometry.cameras import BoolArray, CameraModel, FloatArray
from bev_service.geometry.grid import BevGrid, EgoBox
from bev_service.geometry.transforms import apply_rigid, invert_rigid


def _same(a: NDArray[Any] | None, b: NDArray[Any] | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


# Dataclasses holding arrays compare them element-wise themselves (eq=False and an explicit
# __eq__): the generated __eq__ would compare arrays with ==, whose truth value is ambiguous.
@dataclass(frozen=True, eq=False)
class GroundHomography:
    """``ground_from_image`` maps undistorted-image pixels to vehicle-frame ground (x, y) in metres;
    the undistorted image is the pinhole view with intrinsic matrix ``undistorted_k``.

    For a camera with pose camera_from_vehicle = [R | t] it is inv(undistorted_k @ [r1 r2 t]) up
    to scale; its sign is normalised on construction (the camera is above the ground)."""

    ground_from_image: FloatArray
    undistorted_k: FloatArray

    def __post_init__(self) -> None:
        h = np.asarray(self.ground_from_image, dtype=np.float64)
        k = np.asarray(self.undistorted_k, dtype=np.float64)
        if h.shape != (3, 3) or not np.isfinite(h).all():
            raise ValueError(f"ground_from_image must be a finite 3x3 matrix, got shape {h.shape}")
        # The condition number, unlike the determinant, does not depend on the matrix's scale.
        if not np.linalg.cond(h) < 1e12:
            raise ValueError("ground_from_image is not invertible (singular or nearly so)")
        if k.shape != (3, 3) or not (k[0, 0] > 0 and k[1, 1] > 0):
            raise ValueError("undistorted_k must be a 3x3 intrinsic matrix with positive focal lengths")
        # A homography is defined up to scale, sign included; fix the sign so that
        # k^-1 @ image_from_ground = s [r1 r2 t] (camera_from_vehicle on z = 0) with s > 0: then
        # it maps every ground point to a positive multiple of its ray, even beyond 90 degrees off
        # axis. det(s [r1 r2 t]) = s^3 (r3 . t) = -s^3 * (camera height above the ground), and
        # the camera is above the ground of a right-handed, z-up frame: s > 0 iff det(h) < 0.
        if np.linalg.det(h) > 0:
            h = -h
        object.__setattr__(self, "ground_from_image", h)
        object.__setattr__(self, "undistorted_k", k)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroundHomography):
            return NotImplemented
        return _same(self.ground_from_image, other.ground_from_image) and _same(self.undistorted_k, other.undistorted_k)

    __hash__ = None  # type: ignore[assignment]

    @cached_property
    def image_from_ground(self) -> FloatArray:
        return np.asarray(np.linalg.inv(self.ground_from_image))

    @cached_property
    def camera_from_ground(self) -> FloatArray:
        """3x3 from ground (x, y, 1) to a positive multiple of the camera-frame ray."""
        return np.asarray(np.linalg.inv(self.undistorted_k) @ self.image_from_ground)


@dataclass(frozen=True, eq=False)
class Camera:
    """One camera of a rig. ``mask``, when given, is the (h, w) bool image of the pixels that see the
    world (False on the car's own body, outside the image circle): a masked pixel never sees the ground."""

    name: str
    model: CameraModel
    vehicle_from_camera: FloatArray | None = None
    ground_homography: GroundHomography | None = None
    mask: BoolArray | None = None

    def __post_init__(self) -> None:
        if (self.vehicle_from_camera is None) == (self.ground_homography is None):
            raise ValueError(f"camera {self.name!r}: give exactly one of vehicle_from_camera and ground_homography")
        if self.mask is not None:
            mask = np.asarray(self.mask, dtype=bool)
            if mask.shape != self.image_size_hw:
                raise ValueError(f"camera {self.name!r}: mask of shape {mask.shape}, expected the image's {self.image_size_hw}")
            if not mask.any():
                raise ValueError(f"camera {self.name!r}: the mask hides every pixel")
            object.__setattr__(self, "mask", mask)
        if self.vehicle_from_camera is not None:
            pose = np.asarray(self.vehicle_from_camera, dtype=np.float64)
            if pose.shape != (4, 4) or not np.isfinite(pose).all():
                raise ValueError(f"camera {self.name!r}: vehicle_from_camera must be a finite 4x4 matrix, got shape {pose.shape}")
            object.__setattr__(self, "vehicle_from_camera", pose)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Camera):
            return NotImplemented
        return (
            (self.name, self.model, self.ground_homography) == (other.name, other.model, other.ground_homography)
            and _same(self.vehicle_from_camera, other.vehicle_from_camera)
            and _same(self.mask, other.mask)
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def image_size_hw(self) -> tuple[int, int]:
        return self.model.image_size_hw

    @cached_property
    def centre(self) -> FloatArray:
        """The camera's optical centre (3,) in the vehicle frame: from its pose, or out of its ground
        homography (camera_from_ground = s [r1 r2 t] with unit r1, r2: centre = -R^T t)."""
        if self.vehicle_from_camera is not None:
            return np.asarray(self.vehicle_from_camera[:3, 3])
        assert self.ground_homography is not None
        m = self.ground_homography.camera_from_ground
        scale = (np.linalg.norm(m[:, 0]) + np.linalg.norm(m[:, 1])) / 2
        r1, r2, t = m[:, 0] / scale, m[:, 1] / scale, m[:, 2] / scale
        rotation = np.column_stack([r1, r2, np.cross(r1, r2)])
        return np.asarray(-rotation.T @ t)

    @cached_property
    def camera_from_vehicle(self) -> FloatArray:
        assert self.vehicle_from_camera is not None
        return invert_rigid(self.vehicle_from_camera)

    def model_pixel_from_ground(self, ground_xy: ArrayLike) -> tuple[FloatArray, BoolArray]:
        """The camera model's pixels (..., 2) for ground points (..., 2) on z = 0 of the vehicle
        frame, and whether the model answers (in front of the lens, inside its range); pixels may
        lie outside the image."""
        xy = np.asarray(ground_xy, dtype=np.float64)
        if self.ground_homography is None:
            points_vehicle = np.concatenate([xy, np.zeros_like(xy[..., :1])], axis=-1)
            return self.model.project(apply_rigid(self.camera_from_vehicle, points_vehicle))
        # No division by w: the homogeneous ray keeps its sign, so ground points behind the
        # undistorted image plane still reach a fisheye model that sees them.
        rays = np.concatenate([xy, np.ones_like(xy[..., :1])], axis=-1) @ self.ground_homography.camera_from_ground.T
        return self.model.project(rays)

    def off_axis_angle(self, ground_xy: ArrayLike) -> FloatArray:
        """Angle (rad) between the optical axis and the ray to each ground point (..., 2)."""
        xy = np.asarray(ground_xy, dtype=np.float64)
        if self.ground_homography is None:
            rays = apply_rigid(self.camera_from_vehicle, np.concatenate([xy, np.zeros_like(xy[..., :1])], axis=-1))
        else:
            rays = np.concatenate([xy, np.ones_like(xy[..., :1])], axis=-1) @ self.ground_homography.camera_from_ground.T
        return np.asarray(np.arctan2(np.hypot(rays[..., 0], rays[..., 1]), rays[..., 2]))

    def pixel_from_ground(self, ground_xy: ArrayLike) -> tuple[FloatArray, BoolArray]:
        """As ``model_pixel_from_ground``, and valid only where the pixel lies inside the image."""
        uv, valid = self.model_pixel_from_ground(ground_xy)
        height, width = self.image_size_hw
        with np.errstate(invalid="ignore"):
            inside = (uv[..., 0] >= -0.5) & (uv[..., 0] < width - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] < height - 0.5)
        valid = valid & inside
        if self.mask is not None:
            rows = np.clip(np.rint(np.nan_to_num(uv[..., 1])), 0, height - 1).astype(np.intp)
            cols = np.clip(np.rint(np.nan_to_num(uv[..., 0])), 0, width - 1).astype(np.intp)
            valid = valid & self.mask[rows, cols]
        return np.where(valid[..., None], uv, np.nan), valid


@dataclass(frozen=True)
class Rig:
    """Cameras, BEV grid and ego footprint of one vehicle."""

    rig_id: str
    version: str
    cameras: tuple[Camera, ...]
    grid: BevGrid
    ego: EgoBox
    origin_note: str = "centre of the vehicle footprint on the ground"
    source_text: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.cameras]
        if not names:
            raise ValueError("a rig needs at least one camera")
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def camera(self, name: str) -> Camera:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"rig {self.rig_id!r} has no camera {name!r}; cameras: {', '.join(self.camera_names)}")

    @cached_property
    def fingerprint(self) -> str:
        """A digest of everything the lookup tables depend on (cache key)."""
        digest = hashlib.sha256(repr((self.grid, self.ego)).encode())
        for cam in self.cameras:
            digest.update(repr((cam.name, cam.model)).encode())
            hom = cam.ground_homography
            matrices = [cam.vehicle_from_camera] if hom is None else [hom.ground_from_image, hom.undistorted_k]
            for m in matrices:
                digest.update(np.asarray(m, dtype=np.float64).tobytes())
            if cam.mask is not None:
                digest.update(np.packbits(cam.mask).tobytes())
        return digest.hexdigest()[:16]


def ground_density(camera: Camera, ground_xy: FloatArray, step_m: float) -> NDArray[np.float64]:
    """Pixels per square metre of ground the camera spends around each point (|det| of the
    ground-to-pixel Jacobian, by central differences); 0 where the camera does not see the point.
    Its inverse is the ground footprint of one pixel: the denser, the better the camera sees it."""
    _, valid = camera.pixel_from_ground(ground_xy)
    dx, dy = np.array([step_m, 0.0]), np.array([0.0, step_m])
    ux = (camera.model_pixel_from_ground(ground_xy + dx)[0] - camera.model_pixel_from_ground(ground_xy - dx)[0]) / (2 * step_m)
    uy = (camera.model_pixel_from_ground(ground_xy + dy)[0] - camera.model_pixel_from_ground(ground_xy - dy)[0]) / (2 * step_m)
    det = np.abs(ux[..., 0] * uy[..., 1] - ux[..., 1] * uy[..., 0])
    return np.where(valid & np.isfinite(det), det, 0.0)
