"""Rigid transforms and plane homographies, named ``<to>_from_<from>`` and read right to left.

Vehicle frame: ISO 8855 / REP-103 (x forward, y left, z up, metres). Camera frame: OpenCV optical
axes (x right, y down, z forward).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

# A camera looking straight along vehicle +x, level: camera z = vehicle x, camera x = vehicle -y,
# camera y = vehicle -z. Columns are the camera axes written in vehicle coordinates.
VEHICLE_FROM_FORWARD_CAMERA_ROTATION = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rotation_from_quaternion(wxyz: ArrayLike) -> FloatArray:
    """Rotation matrix from a unit quaternion (w, x, y, z) (Hamilton convention)."""
    q = np.asarray(wxyz, dtype=np.float64)
    norm = np.linalg.norm(q)
    if q.shape != (4,) or not np.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"expected a non-zero quaternion (w, x, y, z), got {q.tolist()}")
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def quaternion_from_rotation(rotation: ArrayLike) -> FloatArray:
    """Unit quaternion (w, x, y, z) with w >= 0 from a rotation matrix (Shepperd's method)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(m)
    candidates = np.array([trace, m[0, 0], m[1, 1], m[2, 2]])
    i = int(np.argmax(candidates))
    if i == 0:
        s = 2 * np.sqrt(1 + trace)
        q = np.array([s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s])
    else:
        j, k = (i % 3) + 1, ((i + 1) % 3) + 1
        a, b, c = i - 1, j - 1, k - 1
        s = 2 * np.sqrt(1 + m[a, a] - m[b, b] - m[c, c])
        q = np.empty(4)
        q[0] = (m[c, b] - m[b, c]) / s
        q[i] = s / 4
        q[j] = (m[b, a] + m[a, b]) / s
        q[k] = (m[c, a] + m[a, c]) / s
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def rotation_about(axis: str, angle_rad: float) -> FloatArray:
    """Right-handed rotation about the x, y or z axis."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    matrices = {
        "x": [[1, 0, 0], [0, c, -s], [0, s, c]],
        "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }
    return np.array(matrices[axis], dtype=np.float64)


def rotation_z(yaw_rad: ArrayLike) -> FloatArray:
    """Planar rotation (..., 2, 2) by ``yaw_rad`` counter-clockwise, vectorised over yaw: ``a_from_b``
    for a frame b turned by ``yaw_rad`` about z in frame a. Its transpose is ``b_from_a``."""
    yaw = np.asarray(yaw_rad, dtype=np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([np.stack([c, -s], axis=-1), np.stack([s, c], axis=-1)], axis=-2)


def apply_planar(a_from_b: FloatArray, points_b: ArrayLike, translation: ArrayLike | None = None) -> FloatArray:
    """Planar rigid transform of points (..., 2) or (..., 3) from frame b to frame a: x and y turned
    by the rotation ``a_from_b`` (2, 2) or (..., 2, 2), then moved by ``translation`` (b's origin in
    a); z, when given, passes through. Written out per coordinate (``t + r00 x + r01 y``, in that
    order) rather than as a matrix product, so results do not depend on the BLAS; the points' dtype
    is kept as NumPy's promotion with float64 gives it."""
    p = np.asarray(points_b)
    x, y = p[..., 0], p[..., 1]
    r = np.asarray(a_from_b, dtype=np.float64)
    if translation is None:
        xy = [r[..., 0, 0] * x + r[..., 0, 1] * y, r[..., 1, 0] * x + r[..., 1, 1] * y]
    else:
        t = np.asarray(translation, dtype=np.float64)
        xy = [t[..., 0] + r[..., 0, 0] * x + r[..., 0, 1] * y, t[..., 1] + r[..., 1, 0] * x + r[..., 1, 1] * y]
    return np.stack(xy if p.shape[-1] == 2 else [*xy, p[..., 2]], axis=-1)


def rigid(rotation: ArrayLike, translation: ArrayLike) -> FloatArray:
    """4x4 rigid transform from a 3x3 rotation and a translation."""
    out = np.eye(4)
    out[:3, :3] = np.asarray(rotation, dtype=np.float64)
    out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


def invert_rigid(a_from_b: ArrayLike) -> FloatArray:
    """b_from_a from a_from_b, using the rotation's transpose."""
    m = np.asarray(a_from_b, dtype=np.float64)
    rotation_t = m[:3, :3].T
    return rigid(rotation_t, -rotation_t @ m[:3, 3])


def check_rotation(rotation: ArrayLike, tol: float = 1e-4) -> str | None:
    """None when ``rotation`` is a proper rotation, else what is wrong with it."""
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3) or not np.isfinite(r).all():
        return f"expected a finite 3x3 rotation, got shape {r.shape}"
    error = float(np.abs(r.T @ r - np.eye(3)).max())
    if error > tol:
        return f"rotation is not orthonormal (max |R^T R - I| = {error:.2g})"
    if np.linalg.det(r) < 0:
        return "rotation has determinant -1 (a reflection, not a rotation)"
    return None


def vehicle_from_camera_mount(position_m: ArrayLike, yaw_deg: float, pitch_down_deg: float, roll_deg: float = 0.0) -> FloatArray:
    """Pose of a camera mounted at ``position_m`` looking along ``yaw_deg`` (0 = forward, 90 = left),
    tilted down by ``pitch_down_deg`` and rolled about its optical axis by ``roll_deg``."""
    rotation = (
        rotation_about("z", np.deg2rad(yaw_deg))
        @ rotation_about("y", np.deg2rad(pitch_down_deg))
        @ rotation_about("x", np.deg2rad(roll_deg))
        @ VEHICLE_FROM_FORWARD_CAMERA_ROTATION
    )
    return rigid(rotation, position_m)


def apply_rigid(a_from_b: FloatArray, points_b: ArrayLike) -> FloatArray:
    """Transform points (..., 3) from frame b to frame a."""
    p = np.asarray(points_b, dtype=np.float64)
    return p @ a_from_b[:3, :3].T + a_from_b[:3, 3]


def apply_homography(a_from_b: FloatArray, points_b: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Map 2D points (..., 2) through a 3x3 homography; returns (points_a (..., 2), w (...)).

    ``w`` is the homogeneous scale before division; its sign tells which side of the plane's
    vanishing line a point lies on. Points with w == 0 map to NaN.
    """
    p = np.asarray(points_b, dtype=np.float64)
    mapped = p @ a_from_b[:2, :2].T + a_from_b[:2, 2]
    w = p @ a_from_b[2, :2] + a_from_b[2, 2]
    safe_w = np.where(np.abs(w) > 1e-15, w, np.nan)
    return mapped / safe_w[..., None], w


def fit_homography(src: ArrayLike, dst: ArrayLike) -> FloatArray:
    """Least-squares homography dst_from_src from four or more correspondences (normalised DLT,
    Hartley and Zisserman, Multiple View Geometry, algorithm 4.2)."""
    a = np.asarray(src, dtype=np.float64)
    b = np.asarray(dst, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or a.shape != b.shape or len(a) < 4:
        raise ValueError(f"expected two matching (N >= 4, 2) point arrays, got {a.shape} and {b.shape}")
    ta, tb = _normaliser(a), _normaliser(b)
    an = apply_homography(ta, a)[0]
    bn = apply_homography(tb, b)[0]
    rows = []
    for (x, y), (u, v) in zip(an, bn, strict=True):
        rows.append([-x, -y, -1, 0, 0, 0, u * x, u * y, u])
        rows.append([0, 0, 0, -x, -y, -1, v * x, v * y, v])
    _, singular, vt = np.linalg.svd(np.asarray(rows))
    if len(singular) >= 8 and singular[7] < 1e-12 * singular[0]:
        raise ValueError("degenerate correspondences: three or more points are collinear")
    h = vt[-1].reshape(3, 3)
    h = np.linalg.inv(tb) @ h @ ta
    return h / h[2, 2] if abs(h[2, 2]) > 1e-15 else h / np.linalg.norm(h)


def _normaliser(points: FloatArray) -> FloatArray:
    centre = points.mean(axis=0)
    spread = np.sqrt(((points - centre) ** 2).sum(axis=1)).mean()
    scale = np.sqrt(2) / spread if spread > 0 else 1.0
    return np.array([[scale, 0, -scale * centre[0]], [0, scale, -scale * centre[1]], [0, 0, 1]])
