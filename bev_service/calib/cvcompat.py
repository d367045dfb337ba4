"""Every difference between OpenCV 4 and OpenCV 5 that the calibration tools meet, in one place.

- Fisheye calibration flags: OpenCV 4 has them as ``cv2.fisheye.CALIB_*`` with values of their own
  (``cv2.fisheye.CALIB_FIX_K4`` is 128 while the pinhole ``cv2.CALIB_FIX_K4`` is 2048); OpenCV 5
  dropped ``cv2.fisheye.CALIB_*`` and unified the values under ``cv2.CALIB_*``. ``fisheye_flags``
  prefers the fisheye namespace when it exists, so OpenCV 4 never receives pinhole values.
- Point arrays: ``cv2.findChessboardCorners`` returns (N, 1, 2) in OpenCV 4 and (N, 2) in OpenCV 5.
  ``cv2.fisheye.calibrate`` in OpenCV 5 rejects (N, 3) (one channel) and (N, 1, 3) arrays and accepts
  one row of N three-channel points, (1, N, 3), which OpenCV 4 accepts too. ``cv2.calibrateCamera`` in
  OpenCV 5 wants float32 points. Callers hand plain (N, 3) / (N, 2) float64 arrays to the functions
  here and get plain arrays back.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

OPENCV_VERSION: str = cv2.__version__
OPENCV_MAJOR: int = int(OPENCV_VERSION.split(".")[0])

_TERM = cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER


def fisheye_flags(*names: str) -> int:
    """OR of fisheye calibration flags given without prefix (``"FIX_SKEW"``, ``"CHECK_COND"``)."""
    value = 0
    for name in names:
        flag = getattr(getattr(cv2, "fisheye", None), f"CALIB_{name}", None)
        if flag is None:
            flag = getattr(cv2, f"CALIB_{name}")
        value |= int(flag)
    return value


def find_chessboard(gray: NDArray[np.uint8], pattern_cols_rows: tuple[int, int], *, fast_check: bool) -> FloatArray | None:
    """Inner corners (N, 2) of a checkerboard with ``pattern_cols_rows`` inner corners, refined to
    sub-pixel accuracy, row by row; None when the board is not found. ``fast_check`` first runs
    OpenCV's quick rejection test, which saves most of the time on views without a board."""
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
    if fast_check:
        flags |= cv2.CALIB_CB_FAST_CHECK
    found, corners = cv2.findChessboardCorners(gray, pattern_cols_rows, flags=flags)
    if not found or corners is None:
        return None
    corners = np.asarray(corners, dtype=np.float32).reshape(-1, 1, 2)
    window = _subpix_window(corners.reshape(-1, 2).astype(np.float64), pattern_cols_rows[0])
    refined = cv2.cornerSubPix(gray, corners, (window, window), (-1, -1), (_TERM, 40, 0.001))
    return np.asarray(refined, dtype=np.float64).reshape(-1, 2)


def _subpix_window(corners: FloatArray, cols: int) -> int:
    """Half-size of the corner refinement window: half the smallest spacing between neighbouring
    corners, as the ROS camera_calibration package does (large enough to snap to the corner, too small
    to reach the next one), between 2 and 11 pixels."""
    grid = corners.reshape(-1, cols, 2)  # (rows, cols, 2)
    spacings = [np.linalg.norm(np.diff(grid, axis=axis), axis=-1) for axis in (0, 1)]
    spacing = min(float(s.min()) for s in spacings if s.size)
    return int(np.clip(np.ceil(spacing / 2.0), 2, 11))


def fisheye_calibrate(
    object_points: list[FloatArray],
    image_points: list[FloatArray],
    image_size_hw: tuple[int, int],
    flags: int,
    guess: tuple[FloatArray, FloatArray] | None = None,
) -> tuple[float, FloatArray, FloatArray, list[FloatArray], list[FloatArray]]:
    """``cv2.fisheye.calibrate``: returns (rms px, K 3x3, D (4,), rvecs [(3,)], tvecs [(3,)]).
    ``guess`` (K, D) is the start with the USE_INTRINSIC_GUESS flag. Raises cv2.error as OpenCV does
    (ill-conditioned views)."""
    objects = [np.asarray(p, dtype=np.float64).reshape(1, -1, 3) for p in object_points]
    images = [np.asarray(p, dtype=np.float64).reshape(1, -1, 2) for p in image_points]
    height, width = image_size_hw
    k0, d0 = (np.eye(3), np.zeros(4)) if guess is None else (np.array(guess[0], np.float64), np.array(guess[1], np.float64))
    rms, k, d, rvecs, tvecs = cv2.fisheye.calibrate(
        objects, images, (width, height), k0, d0.reshape(4, 1), flags=flags, criteria=(_TERM, 100, 1e-7)
    )
    return float(rms), np.asarray(k, np.float64), np.asarray(d, np.float64).reshape(4), _vectors(rvecs), _vectors(tvecs)


def pinhole_calibrate(
    object_points: list[FloatArray], image_points: list[FloatArray], image_size_hw: tuple[int, int], flags: int = 0
) -> tuple[float, FloatArray, FloatArray, list[FloatArray], list[FloatArray]]:
    """``cv2.calibrateCamera`` (k1, k2, p1, p2, k3): returns (rms px, K, D (5,), rvecs, tvecs)."""
    objects = [np.asarray(p, dtype=np.float32).reshape(-1, 1, 3) for p in object_points]
    images = [np.asarray(p, dtype=np.float32).reshape(-1, 1, 2) for p in image_points]
    height, width = image_size_hw
    rms, k, d, rvecs, tvecs = cv2.calibrateCamera(objects, images, (width, height), None, None, flags=flags)
    return float(rms), np.asarray(k, np.float64), np.asarray(d, np.float64).reshape(-1)[:5], _vectors(rvecs), _vectors(tvecs)


def _vectors(vectors: Any) -> list[FloatArray]:
    return [np.asarray(v, dtype=np.float64).reshape(3) for v in vectors]


def rotation_from_rvec(rvec: FloatArray) -> FloatArray:
    rotation, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3, 1))
    return np.asarray(rotation, dtype=np.float64)


def pose_candidates(object_points: FloatArray, normalised_xy: FloatArray) -> list[tuple[FloatArray, FloatArray]]:
    """Candidate poses (rvec, tvec) of points seen at normalised image coordinates, from several PnP
    solvers; the caller keeps the one that fits best. Several, because no one solver is right every
    time: with OpenCV 5.0.0, IPPE returned a correct translation with a wrong rotation for a camera
    turned about 180 degrees from the target frame (the default rig's right camera), while SQPnP and
    the iterative solver were right; IPPE in turn gives both solutions of the planar ambiguity."""
    objects = np.asarray(object_points, dtype=np.float64).reshape(-1, 3)
    images = np.asarray(normalised_xy, dtype=np.float64).reshape(-1, 2)
    candidates = []
    for method in (cv2.SOLVEPNP_IPPE, cv2.SOLVEPNP_SQPNP, cv2.SOLVEPNP_ITERATIVE):
        try:
            count, rvecs, tvecs, _ = cv2.solvePnPGeneric(objects, images, np.eye(3), None, flags=method)
        except cv2.error:
            continue
        for rvec, tvec in list(zip(rvecs, tvecs, strict=True))[: int(count)]:
            candidates.append((np.asarray(rvec, np.float64).reshape(3), np.asarray(tvec, np.float64).reshape(3)))
    return candidates


def ransac_homography(src: FloatArray, dst: FloatArray, threshold: float) -> NDArray[np.bool_]:
    """Inlier mask of ``cv2.findHomography(src, dst, RANSAC)``; ``threshold`` is in ``dst`` units."""
    _, mask = cv2.findHomography(
        np.asarray(src, dtype=np.float64).reshape(-1, 1, 2),
        np.asarray(dst, dtype=np.float64).reshape(-1, 1, 2),
        cv2.RANSAC,
        ransacReprojThreshold=threshold,
        maxIters=5000,
        confidence=0.999,
    )
    if mask is None:
        return np.zeros(len(src), dtype=bool)
    return np.asarray(mask, dtype=bool).reshape(-1)
