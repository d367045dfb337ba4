"""A rig's cameras in the terms other tools exchange: frame names, each camera's pose in the vehicle frame,
and its intrinsics as one of the distortion models that ROS ``CameraInfo`` and ``foxglove.CameraCalibration``
know. Recordings written by ``bev replay`` and the live view of ``bev serve --foxglove-port`` use the same.

- Pinhole: ``plumb_bob`` (k1, k2, p1, p2, k3), exact.
- Kannala-Brandt: ``kannala_brandt`` (Foxglove; ``equidistant`` in ROS, OpenCV's fisheye), k1..k4, exact.
- Mei and OCam, which neither knows: ``kannala_brandt`` fitted by least squares to the model's own
  projection (``fitted``; within a pixel inside the image on the rigs the tests hold).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bev_service.geometry.cameras import CameraModel, FisheyeCamera, PinholeCamera
from bev_service.geometry.rig import Camera
from bev_service.geometry.transforms import invert_rigid, rigid

log = logging.getLogger(__name__)

KB_FIT_SAMPLES = 256
VEHICLE_FRAME_ID = "vehicle"  # the rig's vehicle frame (ISO 8855), where grids and camera poses are given


def camera_frame_id(name: str) -> str:
    """The frame of camera ``name`` in transforms and messages: OpenCV optical axes (x right, y down, z forward)."""
    return f"{name}_optical_frame"


def vehicle_from_camera(camera: Camera) -> NDArray[np.float64]:
    """The camera's pose in the vehicle frame: given, or out of its ground homography (camera_from_ground =
    s [r1 r2 t], the ground plane being the vehicle frame's z = 0)."""
    if camera.vehicle_from_camera is not None:
        return np.asarray(camera.vehicle_from_camera, dtype=np.float64)
    assert camera.ground_homography is not None
    m = camera.ground_homography.camera_from_ground
    scale = (np.linalg.norm(m[:, 0]) + np.linalg.norm(m[:, 1])) / 2
    r1, r2, t = m[:, 0] / scale, m[:, 1] / scale, m[:, 2] / scale
    u, _, vt = np.linalg.svd(np.column_stack([r1, r2, np.cross(r1, r2)]))  # the nearest rotation
    return invert_rigid(rigid(u @ vt, t))


@dataclass(frozen=True)
class Calibration:
    """Intrinsics as a standard model: ``distortion_model`` (Foxglove's name) with its ``d``, and k (3x3)."""

    distortion_model: str
    d: tuple[float, ...]
    k: NDArray[np.float64]
    fitted: bool = False  # a Kannala-Brandt fit of a model the standards do not know (Mei, OCam)

    @property
    def ros_distortion_model(self) -> str:
        """The name ROS ``CameraInfo`` gives the same model."""
        return "equidistant" if self.distortion_model == "kannala_brandt" else self.distortion_model


def calibration_of(model: CameraModel) -> Calibration:
    """The model as ``plumb_bob`` or ``kannala_brandt`` (the module docstring)."""
    if isinstance(model, PinholeCamera):
        d = model.distortion
        return Calibration("plumb_bob", (d.k1, d.k2, d.p1, d.p2, d.k3), model.intrinsics.matrix)
    if isinstance(model, FisheyeCamera):
        return Calibration("kannala_brandt", tuple(float(v) for v in model.k), model.intrinsics.matrix)
    return fit_kannala_brandt(model)


def fit_kannala_brandt(model: CameraModel) -> Calibration:
    """Kannala-Brandt intrinsics (fx, fy, cx, cy, k1..k4) that best reproduce the model's projection (least
    squares on theta_d over rays along the image axes, up to where they leave the image)."""
    h, w = model.image_size_hw
    (centre,), _ = model.project(np.array([[0.0, 0.0, 1.0]]))
    theta = np.linspace(0.0, np.pi * 0.95, KB_FIT_SAMPLES)[1:]
    theta_d, focal = [], []
    for axis in (0, 1):
        rays = np.zeros((len(theta), 3))
        rays[:, axis], rays[:, 2] = np.sin(theta), np.cos(theta)
        uv, valid = model.project(rays)
        radius = uv[:, axis] - centre[axis]
        inside = valid & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        inside &= np.cumprod(inside).astype(bool)  # up to where the ray first leaves the image
        f = radius[0] / theta[0]  # the slope on the optical axis: Kannala-Brandt's focal length
        focal.append(f)
        theta_d.append((theta[inside], radius[inside] / f))
    t = np.concatenate([a for a, _ in theta_d])
    td = np.concatenate([b for _, b in theta_d])
    k = np.zeros(4)
    if len(t) >= 4:
        basis = np.stack([t**3, t**5, t**7, t**9], axis=1)  # theta_d = theta + k1 theta^3 + ... + k4 theta^9
        k = np.linalg.lstsq(basis, td - t, rcond=None)[0]
        residual_px = float(np.abs(basis @ k - (td - t)).max() * max(focal))
        log.debug("Kannala-Brandt fit of %s within %.2f px", type(model).__name__, residual_px)
    matrix = np.array([[focal[0], 0.0, centre[0]], [0.0, focal[1], centre[1]], [0.0, 0.0, 1.0]])
    return Calibration("kannala_brandt", tuple(float(v) for v in k), matrix, fitted=True)
