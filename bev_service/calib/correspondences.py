"""A camera's tie to the ground from measured image-ground point pairs: ground homography or pose.

Input (the points file, JSON; see ``calibration/README.md``)::

    {
      "camera": "front",                      # optional: the rig camera these points belong to
      "intrinsics": "front_cam.json",         # optional: CAM.json path (relative to this file) or its content
      "undistorted_k": [[...], [...], [...]], # optional: K of the undistorted image (default: the camera's K)
      "points": [
        {"name": "mat corner FL", "image_px": [u, v], "ground_m": [x, y]},
        ...                                   # at least 4, no 3 of them on one line
      ]
    }

``image_px`` are pixels of the raw image: distorted when intrinsics are given (they are lifted to rays
through the camera model and re-projected with ``undistorted_k``), already undistorted otherwise.
``ground_m`` are vehicle-frame ground coordinates in metres (ISO 8855: x forward, y left).

``fit_ground_homography`` gives ``ground_from_image`` (undistorted image pixels to ground metres)
with the error of every point on the ground in centimetres; ``fit_ground_pose`` gives
``vehicle_from_camera`` with the error of every point in pixels (needs intrinsics).
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from bev_service.calib import cvcompat
from bev_service.calib.intrinsics import camera_from_json, rig_camera_block
from bev_service.calib.rigfile import StrictModel
from bev_service.errors import CalibrationError
from bev_service.geometry.cameras import CameraModel, FloatArray
from bev_service.geometry.rig import GroundHomography
from bev_service.geometry.transforms import (
    apply_homography,
    apply_rigid,
    fit_homography,
    invert_rigid,
    quaternion_from_rotation,
    rigid,
)

log = logging.getLogger(__name__)

MIN_POINTS = 4
# Relative size below which a spread of points counts as a line (smallest / largest singular value,
# or a triangle's area over the squared spread): a homography through them would be meaningless.
_COLLINEAR = 1e-3
# Rays further than this off the optical axis (z of the unit ray) are left out of the pose's
# initial guess, which works on the normalised image plane; the refinement uses every point.
_MIN_RAY_Z = 0.1

Matrix3 = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]


class _PointSpec(StrictModel):
    name: str | None = None
    image_px: tuple[float, float]
    ground_m: tuple[float, float]


class _PointsFileSpec(StrictModel):
    camera: str | None = None
    intrinsics: str | dict[str, Any] | None = None
    undistorted_k: Matrix3 | None = None
    points: list[_PointSpec]


@dataclass(frozen=True)
class GroundPoints:
    """Measured pairs: raw image pixels (N, 2) and vehicle ground (x, y) metres (N, 2)."""

    image_px: FloatArray
    ground_m: FloatArray
    names: tuple[str, ...]
    camera_name: str | None = None
    camera: CameraModel | None = None
    intrinsics: dict[str, Any] | None = None  # the CAM.json content the camera was made from
    undistorted_k: FloatArray | None = None

    def __post_init__(self) -> None:
        check_configuration(self.ground_m, self.names, "ground_m")


def load_points(path: str | Path) -> GroundPoints:
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CalibrationError(f"cannot read points file {file}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"points file {file} is not valid JSON: {exc}") from exc
    return points_from_dict(data, base_dir=file.parent)


def points_from_dict(data: Any, base_dir: Path = Path()) -> GroundPoints:
    """Validate a points mapping (the points file's content); relative paths start at ``base_dir``."""
    try:
        spec = _PointsFileSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise CalibrationError(first["msg"], field=where) from exc
    intrinsics = spec.intrinsics
    if isinstance(intrinsics, str):
        intrinsics = _read_json(base_dir / intrinsics, spec.camera)
    camera = None
    if intrinsics is not None:
        try:
            camera = camera_from_json(intrinsics)
        except CalibrationError as exc:
            raise CalibrationError(str(exc), camera=spec.camera, field="intrinsics") from exc
    names = tuple(p.name or f"#{i}" for i, p in enumerate(spec.points))
    return GroundPoints(
        image_px=np.array([p.image_px for p in spec.points], dtype=np.float64).reshape(-1, 2),
        ground_m=np.array([p.ground_m for p in spec.points], dtype=np.float64).reshape(-1, 2),
        names=names,
        camera_name=spec.camera,
        camera=camera,
        intrinsics=intrinsics,
        undistorted_k=None if spec.undistorted_k is None else np.asarray(spec.undistorted_k, dtype=np.float64),
    )


def _read_json(path: Path, camera: str | None) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"cannot read intrinsics file {path}: {exc}", camera=camera, field="intrinsics") from exc
    if not isinstance(data, dict):
        raise CalibrationError(f"intrinsics file {path} must hold a JSON object", camera=camera, field="intrinsics")
    return data


def check_configuration(points: FloatArray, names: tuple[str, ...], what: str) -> None:
    """CalibrationError unless there are at least 4 distinct points, not all on one line, and (with
    exactly 4) no 3 on one line: the configurations a homography or a planar pose cannot come from."""
    if len(points) < MIN_POINTS:
        raise CalibrationError(f"need at least {MIN_POINTS} point pairs, got {len(points)}", field=what)
    if not np.isfinite(points).all():
        raise CalibrationError("coordinates must be finite numbers", field=what)
    centred = points - points.mean(axis=0)
    spread = float(np.linalg.norm(centred, axis=1).max())
    for i, j in itertools.combinations(range(len(points)), 2):
        if np.linalg.norm(points[i] - points[j]) <= 1e-9 * max(spread, 1.0):
            raise CalibrationError(f"points {names[i]!r} and {names[j]!r} are at the same position", field=what)
    singular = np.linalg.svd(centred, compute_uv=False)
    if singular[1] < _COLLINEAR * singular[0]:
        raise CalibrationError(
            "all points lie on one line; spread them over the ground the camera sees (at least 4, no 3 on a line)", field=what
        )
    if len(points) == MIN_POINTS:
        for i, j, k in itertools.combinations(range(MIN_POINTS), 3):
            a, b, c = points[i], points[j], points[k]
            area = abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])) / 2
            if area < _COLLINEAR * spread * spread:
                raise CalibrationError(
                    f"points {names[i]!r}, {names[j]!r} and {names[k]!r} lie on one line; with 4 points no 3 may", field=what
                )


# --- undistortion ----------------------------------------------------------------------------


def default_undistorted_k(camera: CameraModel) -> FloatArray:
    """The camera's own K, a natural choice for the undistorted image (same focal length and centre)."""
    intrinsics = getattr(camera, "intrinsics", None)
    if intrinsics is None:
        raise CalibrationError("this camera model has no K; give 'undistorted_k' in the points file", field="undistorted_k")
    return np.asarray(intrinsics.matrix, dtype=np.float64)


def rays_from_pixels(points: GroundPoints) -> FloatArray:
    """Unit rays (N, 3) in the camera frame for the raw image points (needs the camera model)."""
    assert points.camera is not None
    rays, valid = points.camera.unproject(points.image_px)
    if not valid.all():
        bad = [points.names[i] for i in np.nonzero(~valid)[0]]
        raise CalibrationError(
            f"image points outside the camera model's field of view: {bad}", camera=points.camera_name, field="points"
        )
    return np.asarray(rays)


def undistorted_pixels(points: GroundPoints, undistorted_k: FloatArray) -> FloatArray:
    """The raw image points (N, 2) moved to the undistorted (pinhole) image with ``undistorted_k``."""
    rays = rays_from_pixels(points)
    behind = rays[:, 2] <= 1e-6
    if behind.any():
        bad = [points.names[i] for i in np.nonzero(behind)[0]]
        raise CalibrationError(
            f"points 90 degrees or more off the optical axis have no undistorted pixel: {bad}",
            camera=points.camera_name,
            field="points",
        )
    uv1 = rays / rays[:, 2:3] @ undistorted_k.T
    return np.asarray(uv1[:, :2])


# --- homography --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HomographyFit:
    ground_from_image: FloatArray  # 3x3, undistorted image pixels -> vehicle ground metres
    undistorted_k: FloatArray | None
    undistorted_px: FloatArray  # (N, 2)
    errors_cm: FloatArray  # (N,), on the ground
    inliers: NDArray[np.bool_]  # (N,)

    @property
    def rms_cm(self) -> float:
        return float(np.sqrt(np.mean(self.errors_cm[self.inliers] ** 2)))

    @property
    def max_cm(self) -> float:
        return float(self.errors_cm[self.inliers].max())


def fit_ground_homography(points: GroundPoints, ransac_cm: float | None = None) -> HomographyFit:
    """Ground homography from the pairs: normalised DLT on all points, or on RANSAC's inliers
    (``ransac_cm``: the inlier threshold on the ground) when some measurements may be wrong."""
    k_u = points.undistorted_k
    if points.camera is not None:
        k_u = default_undistorted_k(points.camera) if k_u is None else k_u
        image = undistorted_pixels(points, k_u)
    else:
        image = points.image_px
    check_configuration(image, points.names, "image_px")
    inliers = np.ones(len(image), dtype=bool)
    if ransac_cm is not None:
        if not ransac_cm > 0:
            raise CalibrationError(f"the RANSAC threshold must be positive, got {ransac_cm} cm", field="ransac_cm")
        inliers = cvcompat.ransac_homography(image, points.ground_m, ransac_cm / 100.0)
        if inliers.sum() < MIN_POINTS:
            raise CalibrationError(
                f"RANSAC found only {int(inliers.sum())} consistent points at {ransac_cm} cm; need {MIN_POINTS}"
            )
        log.info("RANSAC: %d of %d points within %.1f cm", int(inliers.sum()), len(image), ransac_cm)
    try:
        ground_from_image = fit_homography(image[inliers], points.ground_m[inliers])
    except ValueError as exc:
        raise CalibrationError(str(exc), camera=points.camera_name, field="points") from exc
    if k_u is not None:
        # Validates (invertible, K usable) and fixes the homography's sign the way the rig does.
        ground_from_image = _checked_homography(ground_from_image, k_u, points.camera_name).ground_from_image
    mapped, _ = apply_homography(ground_from_image, image)
    errors_cm = np.linalg.norm(mapped - points.ground_m, axis=1) * 100.0
    return HomographyFit(ground_from_image, k_u, image, errors_cm, inliers)


def _checked_homography(ground_from_image: FloatArray, undistorted_k: FloatArray, camera: str | None) -> GroundHomography:
    try:
        return GroundHomography(ground_from_image, undistorted_k)
    except ValueError as exc:
        raise CalibrationError(str(exc), camera=camera, field="ground_homography") from exc


def homography_to_json(points: GroundPoints, fit: HomographyFit, ransac_cm: float | None = None) -> dict[str, Any]:
    """H.json: the homography, every point's error, and a rig camera block when intrinsics were given."""
    out: dict[str, Any] = {
        "camera": points.camera_name,
        "ground_from_image": fit.ground_from_image.tolist(),
        "undistorted_k": None if fit.undistorted_k is None else fit.undistorted_k.tolist(),
        "image_points": "raw pixels, undistorted through the camera model" if points.camera else "undistorted pixels as given",
        "rms_cm": fit.rms_cm,
        "max_cm": fit.max_cm,
        "ransac_cm": ransac_cm,
        "inliers": int(fit.inliers.sum()),
        "outliers": [n for n, ok in zip(points.names, fit.inliers, strict=True) if not ok],
        "points": [
            {
                "name": n,
                "image_px": p.tolist(),
                "undistorted_px": u.tolist(),
                "ground_m": g.tolist(),
                "error_cm": float(e),
                "inlier": bool(i),
            }
            for n, p, u, g, e, i in zip(
                points.names, points.image_px, fit.undistorted_px, points.ground_m, fit.errors_cm, fit.inliers, strict=True
            )
        ],
    }
    if points.intrinsics is not None and fit.undistorted_k is not None:
        out["rig_camera"] = _rig_camera(points) | {
            "ground_homography": {
                "ground_from_image": fit.ground_from_image.tolist(),
                "undistorted_k": fit.undistorted_k.tolist(),
            }
        }
    return out


def _rig_camera(points: GroundPoints) -> dict[str, Any]:
    assert points.intrinsics is not None and points.camera is not None
    block = rig_camera_block(
        str(points.intrinsics["model"]), points.intrinsics["K"], points.intrinsics["D"], points.camera.image_size_hw
    )
    return {"name": points.camera_name or "CAMERA"} | block


# --- pose ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoseFit:
    vehicle_from_camera: FloatArray  # 4x4
    errors_px: FloatArray  # (N,)

    @property
    def rms_px(self) -> float:
        return float(np.sqrt(np.mean(self.errors_px**2)))

    @property
    def max_px(self) -> float:
        return float(self.errors_px.max())


def fit_ground_pose(points: GroundPoints) -> PoseFit:
    """``vehicle_from_camera`` from the pairs and the camera model: IPPE on the normalised image
    plane for a start, then Levenberg-Marquardt on the pixel error through the camera model itself
    (so rays beyond 90 degrees and any model count at full weight)."""
    if points.camera is None:
        raise CalibrationError("a pose needs the camera's intrinsics ('intrinsics' in the points file)", field="intrinsics")
    rays = rays_from_pixels(points)
    ground_xyz = np.concatenate([points.ground_m, np.zeros((len(points.ground_m), 1))], axis=1)
    usable = rays[:, 2] > _MIN_RAY_Z
    if usable.sum() < MIN_POINTS:
        raise CalibrationError(
            f"need at least {MIN_POINTS} points within 84 degrees of the optical axis, got {int(usable.sum())}"
        )
    normalised = rays[usable, :2] / rays[usable, 2:3]
    camera = points.camera
    candidates = [rigid(cvcompat.rotation_from_rvec(r), t) for r, t in cvcompat.pose_candidates(ground_xyz[usable], normalised)]
    if not candidates:
        raise CalibrationError("OpenCV found no pose for these points", camera=points.camera_name, field="points")
    start = min(candidates, key=lambda pose: float(np.sum(_residuals(camera, ground_xyz, points.image_px, pose) ** 2)))
    camera_from_vehicle = _levenberg_marquardt(camera, ground_xyz, points.image_px, start)
    errors = np.linalg.norm(_residuals(camera, ground_xyz, points.image_px, camera_from_vehicle).reshape(-1, 2), axis=1)
    vehicle_from_camera = invert_rigid(camera_from_vehicle)
    if vehicle_from_camera[2, 3] <= 0:
        raise CalibrationError(
            f"the best pose puts the camera {vehicle_from_camera[2, 3]:.2f} m below the ground; check the point pairs and axes",
            camera=points.camera_name,
        )
    return PoseFit(vehicle_from_camera, errors)


def _residuals(camera: CameraModel, ground_xyz: FloatArray, image_px: FloatArray, camera_from_vehicle: FloatArray) -> FloatArray:
    pixels, valid = camera.project(apply_rigid(camera_from_vehicle, ground_xyz))
    # A point the model cannot see under this pose costs a fixed large amount, so the search turns back.
    return np.where(valid[:, None], pixels - image_px, 1e4).reshape(-1)


def _updated(pose: FloatArray, step: FloatArray) -> FloatArray:
    """``pose`` moved by a small rotation vector step[:3] (applied on the left) and translation step[3:].
    Steps are taken from the current pose, never as a global rotation vector, which is singular at
    180 degrees (where the default rig's rear and right cameras are)."""
    return rigid(cvcompat.rotation_from_rvec(step[:3]) @ pose[:3, :3], pose[:3, 3] + step[3:])


def _levenberg_marquardt(
    camera: CameraModel, ground_xyz: FloatArray, image_px: FloatArray, pose: FloatArray, iterations: int = 100
) -> FloatArray:
    """Minimise the squared pixel error over the pose (6 parameters, numeric Jacobian)."""
    residual = _residuals(camera, ground_xyz, image_px, pose)
    cost, damping, eps = float(residual @ residual), 1e-3, 1e-7
    for _ in range(iterations):
        columns = [(_residuals(camera, ground_xyz, image_px, _updated(pose, d)) - residual) / eps for d in np.eye(6) * eps]
        jacobian = np.stack(columns, axis=1)  # (2N, 6)
        normal = jacobian.T @ jacobian
        step = np.asarray(
            np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -jacobian.T @ residual), np.float64
        )
        candidate = _updated(pose, step)
        new_residual = _residuals(camera, ground_xyz, image_px, candidate)
        new_cost = float(new_residual @ new_residual)
        if new_cost < cost:
            converged = cost - new_cost <= 1e-12 * cost or float(np.abs(step).max()) < 1e-12
            pose, residual, cost, damping = candidate, new_residual, new_cost, damping / 10
            if converged:
                break
        else:
            damping *= 10
            if damping > 1e12:
                break
    return pose


def pose_to_json(points: GroundPoints, fit: PoseFit) -> dict[str, Any]:
    """POSE.json: the pose (4x4, and quaternion + translation for people), every point's error in
    pixels, and a rig camera block ready to paste."""
    pose = fit.vehicle_from_camera
    quaternion = quaternion_from_rotation(pose[:3, :3]).tolist()
    translation = pose[:3, 3].tolist()
    return {
        "camera": points.camera_name,
        "vehicle_from_camera": pose.tolist(),
        "quaternion_wxyz": quaternion,
        "translation_m": translation,
        "height_m": float(pose[2, 3]),
        "rms_px": fit.rms_px,
        "max_px": fit.max_px,
        "points": [
            {"name": n, "image_px": p.tolist(), "ground_m": g.tolist(), "error_px": float(e)}
            for n, p, g, e in zip(points.names, points.image_px, points.ground_m, fit.errors_px, strict=True)
        ],
        # The matrix, not the quaternion: it loads back bit for bit (the rig file takes either).
        "rig_camera": _rig_camera(points) | {"vehicle_from_camera": {"matrix": pose.tolist()}},
    }
