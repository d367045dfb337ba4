"""Camera models: camera-frame points to pixels and pixels to unit rays, vectorised.

Every model is a frozen dataclass with
  - ``project(points_cam (..., 3)) -> (pixels (..., 2), valid (...))``
  - ``unproject(pixels (..., 2)) -> (rays (..., 3) unit length, valid (...))``
Camera frame: OpenCV optical axes (x right, y down, z forward). Pixel (0, 0) is the centre of the
top-left pixel, as in OpenCV. ``valid`` is False where the model has no answer: behind the lens's
field of view, outside the range where the distortion polynomial is monotonic (where the model
folds), or for non-finite input. Invalid outputs hold NaN, never a folded pixel.

Models:
  - ``PinholeCamera``: radial-tangential distortion (OpenCV k1, k2, p1, p2, k3).
  - ``FisheyeCamera``: OpenCV fisheye / Kannala-Brandt (k1..k4), written with atan2 so it stays
    valid beyond 90 degrees off-axis (OpenCV's own projection folds such rays onto the image).
  - ``MeiCamera``: unified omnidirectional model (Mei and Rives, ICRA 2007) with radial-tangential
    distortion, the model of OpenCV's ``omnidir`` module.
  - ``OcamCamera``: Scaramuzza's OCam model (Scaramuzza et al., IROS 2006) through its inverse
    polynomial rho(theta), theta = atan2(-z, |(x, y)|).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

_NEWTON_STEPS = 30
_TINY = 1e-12
# Residual (normalised image units) below which an undistorted point counts as converged.
_UNDISTORT_TOL = 1e-10
# Largest |rho| (px) an OCam polynomial may give on the optical axis (fitted ones give ~0.01 px).
_OCAM_AXIS_TOL_PX = 1.0


@runtime_checkable
class CameraModel(Protocol):
    """What the projector needs of any camera model."""

    @property
    def image_size_hw(self) -> tuple[int, int]: ...

    def project(self, points_cam: ArrayLike) -> tuple[FloatArray, BoolArray]: ...

    def unproject(self, pixels: ArrayLike) -> tuple[FloatArray, BoolArray]: ...


def _as_points(points: ArrayLike, last: int) -> tuple[FloatArray, BoolArray]:
    """A float64 copy of ``points`` (..., last) and where it is finite. Non-finite entries are
    replaced by a harmless point (the optical axis, pixel (0, 0)) so that the models compute
    without floating-point warnings; the caller marks them invalid."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.shape[-1:] != (last,):
        raise ValueError(f"expected an array of shape (..., {last}), got {arr.shape}")
    finite = np.asarray(np.isfinite(arr).all(axis=-1))
    placeholder = np.array([0.0, 0.0, 1.0] if last == 3 else [0.0] * last)
    return np.where(finite[..., None], arr, placeholder), finite


def _first_fold(slope_coeffs: FloatArray, upper: float) -> float:
    """Last t in [0, upper] before the slope polynomial sum(c_i t^(2i)) first drops to zero or below."""
    t = np.linspace(0.0, upper, 20001)
    slope = np.polynomial.polynomial.polyval(t * t, slope_coeffs)
    bad = np.nonzero(slope <= 0.0)[0]
    return float(t[bad[0] - 1]) if bad.size else upper


def _with_invalid(values: FloatArray, valid: BoolArray) -> FloatArray:
    return np.where(valid[..., None], values, np.nan)


def _unit_direction(xy: FloatArray, r: FloatArray) -> FloatArray:
    """xy / r, and (0, 0) on the optical axis. Dividing by r itself (never by a clamped r) keeps
    it exact however close to the axis: the image radius is then set by the angle alone."""
    return xy / np.where(r > 0, r, 1.0)[..., None]


# --- radial-tangential distortion (shared by pinhole and Mei) ---------------------------------


@dataclass(frozen=True)
class RadTan:
    """OpenCV radial-tangential distortion of normalised image coordinates."""

    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    k3: float = 0.0

    @cached_property
    def max_radius(self) -> float:
        """Largest undistorted radius where r * radial(r) still increases (beyond it the model folds)."""
        # d/dr [r (1 + k1 r^2 + k2 r^4 + k3 r^6)] = 1 + 3 k1 r^2 + 5 k2 r^4 + 7 k3 r^6
        coeffs = np.array([1.0, 3 * self.k1, 5 * self.k2, 7 * self.k3])
        return _first_fold(coeffs, upper=20.0)

    def distort(self, xy: FloatArray) -> FloatArray:
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = 1 + r2 * (self.k1 + r2 * (self.k2 + r2 * self.k3))
        xd = x * radial + 2 * self.p1 * x * y + self.p2 * (r2 + 2 * x * x)
        yd = y * radial + self.p1 * (r2 + 2 * y * y) + 2 * self.p2 * x * y
        return np.stack([xd, yd], axis=-1)

    def _jacobian(self, xy: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = 1 + r2 * (self.k1 + r2 * (self.k2 + r2 * self.k3))
        dradial_dr2 = self.k1 + r2 * (2 * self.k2 + 3 * self.k3 * r2)
        dxx = radial + 2 * x * x * dradial_dr2 + 2 * self.p1 * y + 6 * self.p2 * x
        dxy = 2 * x * y * dradial_dr2 + 2 * self.p1 * x + 2 * self.p2 * y
        dyx = 2 * x * y * dradial_dr2 + 2 * self.p1 * x + 2 * self.p2 * y
        dyy = radial + 2 * y * y * dradial_dr2 + 6 * self.p1 * y + 2 * self.p2 * x
        return dxx, dxy, dyx, dyy

    def undistort(self, xy_distorted: FloatArray) -> FloatArray:
        """Invert ``distort``: start from the inverse of the radial part (table lookup on its
        monotonic range), then Newton steps on the full model (quadratic convergence). NaN where
        Newton does not converge: a distorted point beyond the fold has no preimage, and the
        iterate would otherwise stop anywhere and pass for an answer."""
        r_d = np.hypot(xy_distorted[..., 0], xy_distorted[..., 1])
        table_r = np.linspace(0.0, self.max_radius, 4097)
        table_rd = table_r * (1 + table_r**2 * (self.k1 + table_r**2 * (self.k2 + table_r**2 * self.k3)))
        r = np.interp(r_d, table_rd, table_r)
        xy = xy_distorted * np.where(r_d > _TINY, r / np.where(r_d > _TINY, r_d, 1.0), 1.0)[..., None]
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(_NEWTON_STEPS):
                residual = self.distort(xy) - xy_distorted
                a, b, c, d = self._jacobian(xy)
                det = a * d - b * c
                det = np.where(np.abs(det) < _TINY, _TINY, det)
                step_x = (d * residual[..., 0] - b * residual[..., 1]) / det
                step_y = (a * residual[..., 1] - c * residual[..., 0]) / det
                xy = xy - np.stack([step_x, step_y], axis=-1)
            error = np.abs(self.distort(xy) - xy_distorted).max(axis=-1)
            converged = error <= _UNDISTORT_TOL * np.maximum(1.0, r_d)
        return _with_invalid(xy, converged)

    def within_range(self, xy: FloatArray) -> BoolArray:
        r = np.hypot(xy[..., 0], xy[..., 1])
        return np.asarray(r < self.max_radius)


# --- intrinsic matrix helpers ---------------------------------------------------------------


@dataclass(frozen=True)
class Intrinsics:
    """Focal lengths and principal point in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float

    def pixel_from_normalised(self, xy: FloatArray) -> FloatArray:
        return np.stack([self.fx * xy[..., 0] + self.cx, self.fy * xy[..., 1] + self.cy], axis=-1)

    def normalised_from_pixel(self, uv: FloatArray) -> FloatArray:
        return np.stack([(uv[..., 0] - self.cx) / self.fx, (uv[..., 1] - self.cy) / self.fy], axis=-1)

    @property
    def matrix(self) -> FloatArray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)


def _check_size(image_size_hw: tuple[int, int]) -> None:
    h, w = image_size_hw
    if not (h > 0 and w > 0):
        raise ValueError(f"image_size_hw must be positive (height, width), got {image_size_hw}")


def _check_intrinsics(k: Intrinsics, image_size_hw: tuple[int, int]) -> None:
    if not (k.fx > 0 and k.fy > 0):
        raise ValueError(f"focal lengths must be positive, got fx={k.fx}, fy={k.fy}")
    _check_size(image_size_hw)


def _angle_limit(max_angle_deg: float | None) -> float:
    return np.pi if max_angle_deg is None else float(np.deg2rad(max_angle_deg))


# --- pinhole ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PinholeCamera:
    """Pinhole camera with OpenCV radial-tangential distortion."""

    intrinsics: Intrinsics
    image_size_hw: tuple[int, int]
    distortion: RadTan = field(default_factory=RadTan)

    def __post_init__(self) -> None:
        _check_intrinsics(self.intrinsics, self.image_size_hw)

    def project(self, points_cam: ArrayLike) -> tuple[FloatArray, BoolArray]:
        p, finite = _as_points(points_cam, 3)
        z = p[..., 2]
        in_front = z > _TINY
        safe_z = np.where(in_front, z, 1.0)
        xy = p[..., :2] / safe_z[..., None]
        valid = finite & in_front & self.distortion.within_range(xy)
        uv = self.intrinsics.pixel_from_normalised(self.distortion.distort(xy))
        return _with_invalid(uv, valid), valid

    def unproject(self, pixels: ArrayLike) -> tuple[FloatArray, BoolArray]:
        uv, finite = _as_points(pixels, 2)
        xy = self.distortion.undistort(self.intrinsics.normalised_from_pixel(uv))
        valid = finite & self.distortion.within_range(xy)
        rays = np.concatenate([xy, np.ones_like(xy[..., :1])], axis=-1)
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
        return _with_invalid(rays, valid), valid


# --- fisheye (Kannala-Brandt) ---------------------------------------------------------------


@dataclass(frozen=True)
class FisheyeCamera:
    """OpenCV fisheye / Kannala-Brandt: theta_d = theta (1 + k1 theta^2 + ... + k4 theta^8).

    theta = atan2(|(x, y)|, z), so rays up to ``max_angle`` off the optical axis (beyond 90 degrees
    for wide lenses) project correctly; rays beyond it, or beyond where the polynomial folds, are
    invalid.
    """

    intrinsics: Intrinsics
    image_size_hw: tuple[int, int]
    k: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    max_angle_deg: float | None = None

    def __post_init__(self) -> None:
        _check_intrinsics(self.intrinsics, self.image_size_hw)
        if len(self.k) != 4:
            raise ValueError(f"fisheye distortion needs 4 coefficients k1..k4, got {len(self.k)}")

    @cached_property
    def max_angle(self) -> float:
        """Largest off-axis angle (rad) the model answers for."""
        k1, k2, k3, k4 = self.k
        fold = _first_fold(np.array([1.0, 3 * k1, 5 * k2, 7 * k3, 9 * k4]), upper=np.pi)
        return min(fold, _angle_limit(self.max_angle_deg))

    def _theta_d(self, theta: FloatArray) -> FloatArray:
        t2 = theta * theta
        k1, k2, k3, k4 = self.k
        return theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))

    def _dtheta_d(self, theta: FloatArray) -> FloatArray:
        t2 = theta * theta
        k1, k2, k3, k4 = self.k
        return 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))

    def project(self, points_cam: ArrayLike) -> tuple[FloatArray, BoolArray]:
        p, finite = _as_points(points_cam, 3)
        r = np.hypot(p[..., 0], p[..., 1])
        theta = np.arctan2(r, p[..., 2])
        valid = finite & (theta <= self.max_angle) & ((r > 0) | (p[..., 2] > 0))
        uv = self.intrinsics.pixel_from_normalised(_unit_direction(p[..., :2], r) * self._theta_d(theta)[..., None])
        return _with_invalid(uv, valid), valid

    def unproject(self, pixels: ArrayLike) -> tuple[FloatArray, BoolArray]:
        uv, finite = _as_points(pixels, 2)
        xy = self.intrinsics.normalised_from_pixel(uv)
        theta_d = np.hypot(xy[..., 0], xy[..., 1])
        theta_d_max = float(self._theta_d(np.array(self.max_angle)))
        valid = finite & (theta_d <= theta_d_max)
        target = np.minimum(theta_d, theta_d_max)
        theta = _solve_monotonic(self._theta_d, self._dtheta_d, target, 0.0, self.max_angle)
        sin_over = np.where(theta_d > _TINY, np.sin(theta) / np.where(theta_d > _TINY, theta_d, 1.0), 1.0)
        rays = np.concatenate([xy * sin_over[..., None], np.cos(theta)[..., None]], axis=-1)
        return _with_invalid(rays, valid), valid


def _solve_monotonic(
    f: Callable[[FloatArray], FloatArray], df: Callable[[FloatArray], FloatArray], target: FloatArray, lo: float, hi: float
) -> FloatArray:
    """Solve f(t) = target for t in [lo, hi] where f increases: table start, then Newton steps."""
    table_t = np.linspace(lo, hi, 4097)
    table_f = f(table_t)
    t = np.interp(target, table_f, table_t)
    for _ in range(8):
        slope = df(t)
        t = np.clip(t - (f(t) - target) / np.where(np.abs(slope) < _TINY, _TINY, slope), lo, hi)
    return np.asarray(t, dtype=np.float64)


# --- unified omnidirectional (Mei) ----------------------------------------------------------


@dataclass(frozen=True)
class MeiCamera:
    """Unified omnidirectional model: the unit-sphere point is projected from (0, 0, -xi)."""

    intrinsics: Intrinsics
    image_size_hw: tuple[int, int]
    xi: float
    distortion: RadTan = field(default_factory=RadTan)

    def __post_init__(self) -> None:
        _check_intrinsics(self.intrinsics, self.image_size_hw)
        if self.xi < 0:
            raise ValueError(f"Mei xi must be >= 0, got {self.xi}")

    @property
    def _min_sphere_z(self) -> float:
        # Beyond z_s = -min(xi, 1/xi) the lifting picks the other root: the model folds there.
        return -min(self.xi, 1.0 / self.xi) if self.xi > 0 else 0.0

    def project(self, points_cam: ArrayLike) -> tuple[FloatArray, BoolArray]:
        p, finite = _as_points(points_cam, 3)
        norm = np.linalg.norm(p, axis=-1)
        sphere = p / np.where(norm > _TINY, norm, 1.0)[..., None]
        denom = sphere[..., 2] + self.xi
        valid = finite & (norm > _TINY) & (sphere[..., 2] > self._min_sphere_z + 1e-9) & (denom > _TINY)
        xy = sphere[..., :2] / np.where(valid, denom, 1.0)[..., None]
        valid &= self.distortion.within_range(xy)
        uv = self.intrinsics.pixel_from_normalised(self.distortion.distort(xy))
        return _with_invalid(uv, valid), valid

    def unproject(self, pixels: ArrayLike) -> tuple[FloatArray, BoolArray]:
        uv, finite = _as_points(pixels, 2)
        xy = self.distortion.undistort(self.intrinsics.normalised_from_pixel(uv))
        r2 = (xy * xy).sum(axis=-1)
        disc = 1 + (1 - self.xi * self.xi) * r2
        valid = finite & (disc >= 0) & self.distortion.within_range(xy)
        factor = (self.xi + np.sqrt(np.maximum(disc, 0.0))) / (r2 + 1)
        rays = np.concatenate([xy * factor[..., None], (factor - self.xi)[..., None]], axis=-1)
        return _with_invalid(rays, valid), valid


# --- Scaramuzza OCam ------------------------------------------------------------------------


@dataclass(frozen=True)
class OcamCamera:
    """Scaramuzza OCam through the inverse polynomial rho(theta), theta = atan2(-z, |(x, y)|).

    theta runs from -pi/2 on the optical axis to 0 at 90 degrees off-axis (and beyond, for rays
    behind the image plane). Pixels: (u, v) = (c x' + d y' + xc, e x' + y' + yc) with
    (x', y') = rho (x, y) / |(x, y)|.
    """

    image_size_hw: tuple[int, int]
    inverse_poly: tuple[float, ...]
    center_xy: tuple[float, float]
    affine_cde: tuple[float, float, float] = (1.0, 0.0, 0.0)
    max_angle_deg: float | None = None

    def __post_init__(self) -> None:
        if len(self.inverse_poly) < 2:
            raise ValueError("OCam inverse polynomial needs at least 2 coefficients")
        _check_size(self.image_size_hw)
        c, d, e = self.affine_cde
        if abs(c - d * e) < _TINY:
            raise ValueError(f"OCam affine part [[c, d], [e, 1]] is singular: c={c}, d={d}, e={e}")
        # rho must start at the image centre and grow: an offset or a decreasing start would send a
        # ring of pixels (or the rays next to the axis) to the wrong side of the image.
        lo, hi = self.theta_range
        rho_axis = float(self._rho(np.array(lo)))
        if abs(rho_axis) > _OCAM_AXIS_TOL_PX:
            raise ValueError(f"OCam polynomial must give rho ~ 0 on the optical axis (theta = -pi/2), got {rho_axis:.4g} px")
        if not hi > lo:
            raise ValueError("OCam polynomial rho(theta) must increase away from the optical axis")

    def _rho(self, theta: FloatArray) -> FloatArray:
        return np.asarray(np.polynomial.polynomial.polyval(theta, self.inverse_poly))

    def _drho(self, theta: FloatArray) -> FloatArray:
        return np.asarray(np.polynomial.polynomial.polyval(theta, np.polynomial.polynomial.polyder(self.inverse_poly)))

    @cached_property
    def theta_range(self) -> tuple[float, float]:
        """(theta on the optical axis, largest theta where rho still increases and the angle limit holds)."""
        lo = -np.pi / 2
        upper = min(np.pi / 2, lo + _angle_limit(self.max_angle_deg))
        t = np.linspace(lo, upper, 20001)
        bad = np.nonzero(self._drho(t) <= 0)[0]
        if not bad.size:
            return lo, upper
        return lo, float(t[max(bad[0] - 1, 0)])

    def project(self, points_cam: ArrayLike) -> tuple[FloatArray, BoolArray]:
        p, finite = _as_points(points_cam, 3)
        r = np.hypot(p[..., 0], p[..., 1])
        theta = np.arctan2(-p[..., 2], r)
        _, hi = self.theta_range
        valid = finite & (theta <= hi) & ((r > 0) | (p[..., 2] > 0))
        xy = _unit_direction(p[..., :2], r) * self._rho(theta)[..., None]
        c, d, e = self.affine_cde
        uv = np.stack(
            [c * xy[..., 0] + d * xy[..., 1] + self.center_xy[0], e * xy[..., 0] + xy[..., 1] + self.center_xy[1]], axis=-1
        )
        return _with_invalid(uv, valid), valid

    def unproject(self, pixels: ArrayLike) -> tuple[FloatArray, BoolArray]:
        uv, finite = _as_points(pixels, 2)
        c, d, e = self.affine_cde
        du, dv = uv[..., 0] - self.center_xy[0], uv[..., 1] - self.center_xy[1]
        det = c - d * e
        x = (du - d * dv) / det
        y = (c * dv - e * du) / det
        rho = np.hypot(x, y)
        lo, hi = self.theta_range
        rho_lo, rho_hi = float(self._rho(np.array(lo))), float(self._rho(np.array(hi)))
        valid = finite & (rho <= rho_hi)
        theta = _solve_monotonic(self._rho, self._drho, np.clip(rho, rho_lo, rho_hi), lo, hi)
        cos_over = np.where(rho > _TINY, np.cos(theta) / np.where(rho > _TINY, rho, 1.0), 0.0)
        rays = np.stack([x * cos_over, y * cos_over, -np.sin(theta)], axis=-1)
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
        return _with_invalid(rays, valid), valid
