"""Ray intersection with the world's primitives, vectorised over rays that share one origin (a camera
centre): slab test for boxes, quadratic for vertical cylinders and cones (frusta) and spheres.

``ray_distance`` returns the distance along unit rays to the first surface in front of the origin
(inf where the ray misses); ``surface_normal``, ``primitive_from_parent`` and
``parent_from_primitive_dirs`` serve shading afterwards. The origin is assumed outside every
primitive (the renderer drops actors that overlap the vehicle).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bev_service.geometry.transforms import apply_planar, rotation_z
from bev_service.synth.objects import Primitive

FloatArray = NDArray[np.float64]
EPS = 1e-4


def primitive_from_parent(prim: Primitive, points: FloatArray) -> FloatArray:
    """Points (..., 3) from the frame the primitive's ``centre`` is given in (its parent) to the
    primitive's frame: origin at its ``centre``, x along its yaw."""
    primitive_from_parent_rotation = rotation_z(prim.yaw_rad).T
    return apply_planar(primitive_from_parent_rotation, np.asarray(points, dtype=np.float64) - np.asarray(prim.centre))


def _primitive_from_parent_dirs(prim: Primitive, dirs: NDArray[np.floating]) -> NDArray[np.floating]:
    return apply_planar(rotation_z(prim.yaw_rad).T, dirs)


def ray_distance(prim: Primitive, origin: FloatArray, dirs: NDArray[np.floating]) -> NDArray[np.float32]:
    """Distance (...) along rays ``origin + t dirs`` (dirs (..., 3), unit) to ``prim``; inf on a miss."""
    if prim.shape == "box":
        t = _box(primitive_from_parent(prim, origin), _primitive_from_parent_dirs(prim, dirs), np.asarray(prim.size))
    elif prim.shape == "frustum":  # symmetric about the vertical axis: only the origin moves
        t = _frustum(np.asarray(origin) - prim.centre, dirs.astype(np.float64), *prim.size)
    elif prim.shape == "sphere":
        t = _sphere(np.asarray(origin) - prim.centre, dirs.astype(np.float64), prim.size[0])
    else:
        raise ValueError(f"unknown primitive shape {prim.shape!r}")
    return t.astype(np.float32)


def _box(o: FloatArray, d: NDArray[np.floating], half: FloatArray) -> NDArray[np.floating]:
    """Slab test (Kay and Kajiya, SIGGRAPH 1986) against the box |x| <= half."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t_lo = (-half - o).astype(d.dtype) * inv
        t_hi = (half - o).astype(d.dtype) * inv
    near = np.minimum(t_lo, t_hi).max(axis=-1)
    far = np.maximum(t_lo, t_hi).min(axis=-1)
    return np.where((near <= far) & (near > EPS), near, np.inf)


def _frustum(o: FloatArray, d: FloatArray, r_base: float, r_top: float, height: float) -> FloatArray:
    """Vertical cone frustum x^2 + y^2 = (a + b z)^2 for 0 <= z <= height, and its top cap."""
    a, b = r_base, (r_top - r_base) / height
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    ox, oy, oz = o
    radius_o = a + b * oz
    qa = dx * dx + dy * dy - b * b * dz * dz
    qb = 2.0 * (ox * dx + oy * dy - b * dz * radius_o)
    qc = ox * ox + oy * oy - radius_o * radius_o
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.sqrt(qb * qb - 4.0 * qa * qc)
        t1 = (-qb - root) / (2.0 * qa)
        t2 = (-qb + root) / (2.0 * qa)
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        t_side = np.where(_on_side(near, oz, dz, a, b, height), near, np.where(_on_side(far, oz, dz, a, b, height), far, np.inf))
        t_cap = (height - oz) / dz
        x, y = ox + t_cap * dx, oy + t_cap * dy
        cap = (t_cap > EPS) & (x * x + y * y <= r_top * r_top)
    return np.minimum(t_side, np.where(cap, t_cap, np.inf))


def _on_side(t: FloatArray, oz: float, dz: FloatArray, a: float, b: float, height: float) -> NDArray[np.bool_]:
    z = oz + t * dz
    return np.asarray((t > EPS) & (z >= 0.0) & (z <= height) & (a + b * z >= 0.0))


def _sphere(o: FloatArray, d: FloatArray, radius: float) -> FloatArray:
    qb = d @ o
    qc = float(o @ o) - radius * radius
    disc = qb * qb - qc
    with np.errstate(invalid="ignore"):
        t = -qb - np.sqrt(disc)
    return np.where((disc >= 0) & (t > EPS), t, np.inf)


def surface_normal(prim: Primitive, local: FloatArray) -> FloatArray:
    """Unit outward normals (..., 3) in the primitive's frame at surface points given in that frame."""
    if prim.shape == "box":
        half = np.asarray(prim.size)
        scaled = np.abs(local) / half  # the face the point lies on is the axis where this is ~1
        axis = scaled.argmax(axis=-1)
        normal = np.zeros_like(local)
        np.put_along_axis(normal, axis[..., None], np.sign(np.take_along_axis(local, axis[..., None], -1)), -1)
        return normal
    if prim.shape == "frustum":
        r_base, r_top, height = prim.size
        b = (r_top - r_base) / height
        radial = np.hypot(local[..., 0], local[..., 1])
        normal = np.stack([local[..., 0], local[..., 1], -b * radial], axis=-1)
        normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-9)
        on_cap = local[..., 2] >= height - 1e-3
        return np.where(on_cap[..., None], np.array([0.0, 0.0, 1.0]), normal)
    return local / np.maximum(np.linalg.norm(local, axis=-1, keepdims=True), 1e-9)


def parent_from_primitive_dirs(prim: Primitive, vectors: FloatArray) -> FloatArray:
    """Directions (..., 3) from the primitive's frame to the frame its ``centre`` is given in."""
    return apply_planar(rotation_z(prim.yaw_rad), vectors)
