"""Camera intrinsics from checkerboard views (OpenCV fisheye or pinhole), and the CAM.json file.

Pipeline: inner corners per image (``cvcompat.find_chessboard``: adaptive threshold, normalised
image, fast check first, sub-pixel refinement), then ``cv2.fisheye.calibrate`` or
``cv2.calibrateCamera``. Views are screened first (the corners must form an unfolded grid with
area). OpenCV's fisheye calibration raises on views whose extrinsic initialisation is
ill-conditioned (a board seen edge-on, or distortion estimates gone astray); fisheye calibration
therefore runs in two stages (see ``calibrate_views``), and a view OpenCV still cannot use is dropped,
one at a time, and recorded with the reason.

CAM.json (written by ``intrinsics_to_json``): ``model`` (fisheye | pinhole), ``K`` (3x3), ``D``
(fisheye k1..k4, or pinhole k1, k2, p1, p2, k3), ``image_size_hw`` (height, width) and
``image_size_wh`` (the same as OpenCV's (width, height)), ``rms_px``, ``views_used``,
``views_dropped`` (with reasons), ``board`` and ``rig_camera`` (the ``image_size_hw`` and ``model``
keys of a rig file camera, ready to paste).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from bev_service.calib import cvcompat
from bev_service.errors import CalibrationError
from bev_service.geometry.cameras import CameraModel, FisheyeCamera, FloatArray, Intrinsics, PinholeCamera, RadTan
from bev_service.geometry.transforms import apply_rigid, rigid
from bev_service.imageio import read_image

log = logging.getLogger(__name__)

ModelName = Literal["fisheye", "pinhole"]
MODELS: tuple[ModelName, ...] = ("fisheye", "pinhole")
MIN_VIEWS = 3
_MIN_QUAD_AREA_PX2 = 1.0

# CALIB_CHECK_COND makes OpenCV name the ill-conditioned view ("input array 4") instead of failing
# later with an anonymous assertion; FIX_SKEW because the project's fisheye model has no skew.
FISHEYE_FLAGS = cvcompat.fisheye_flags("RECOMPUTE_EXTRINSIC", "CHECK_COND", "FIX_SKEW")


@dataclass(frozen=True)
class Board:
    """A checkerboard: ``cols`` x ``rows`` inner corners, squares of ``square_m`` metres."""

    cols: int
    rows: int
    square_m: float

    def __post_init__(self) -> None:
        if self.cols < 2 or self.rows < 2:
            raise CalibrationError(f"a board needs at least 2x2 inner corners, got {self.cols}x{self.rows}", field="board")
        if not self.square_m > 0:
            raise CalibrationError(f"square size must be positive, got {self.square_m} m", field="square_m")

    @classmethod
    def parse(cls, text: str, square_m: float) -> Board:
        """``"8x6"`` (inner corners, columns x rows) to a Board."""
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
        if not match:
            raise CalibrationError(f"expected the board as COLSxROWS inner corners (e.g. 8x6), got {text!r}", field="board")
        return cls(int(match.group(1)), int(match.group(2)), square_m)

    def object_points(self) -> FloatArray:
        """(cols * rows, 3) corner positions on the board (z = 0), in OpenCV's row-major order."""
        grid = np.mgrid[0 : self.cols, 0 : self.rows].T.reshape(-1, 2)  # (N, 2) as (col, row)
        return np.concatenate([grid * self.square_m, np.zeros((len(grid), 1))], axis=1)

    def as_dict(self) -> dict[str, Any]:
        return {"inner_corners_cols_rows": [self.cols, self.rows], "square_m": self.square_m}


@dataclass(frozen=True)
class View:
    """Board corners found in one image."""

    name: str
    image_points: FloatArray  # (N, 2) pixels


@dataclass(frozen=True)
class IntrinsicsResult:
    model: ModelName
    k: FloatArray  # 3x3
    d: FloatArray  # fisheye (4,), pinhole (5,)
    image_size_hw: tuple[int, int]
    rms_px: float
    views_used: list[dict[str, Any]]
    views_dropped: list[dict[str, Any]]
    board: Board | None = None

    def camera(self) -> CameraModel:
        return camera_from_matrices(self.model, self.k, self.d, self.image_size_hw)


def camera_from_matrices(model: str, k: Any, d: Any, image_size_hw: tuple[int, int]) -> CameraModel:
    """A project camera model from OpenCV's K and D (skew must be zero)."""
    k_arr = np.asarray(k, dtype=np.float64)
    d_arr = np.asarray(d, dtype=np.float64).reshape(-1)
    if k_arr.shape != (3, 3) or not np.isfinite(k_arr).all():
        raise CalibrationError(f"K must be a finite 3x3 matrix, got shape {k_arr.shape}", field="K")
    if abs(k_arr[0, 1]) > 1e-9 * abs(k_arr[0, 0]):
        raise CalibrationError(f"K has skew {k_arr[0, 1]}; the camera models here have none", field="K")
    intrinsics = Intrinsics(float(k_arr[0, 0]), float(k_arr[1, 1]), float(k_arr[0, 2]), float(k_arr[1, 2]))
    size = (int(image_size_hw[0]), int(image_size_hw[1]))
    try:
        if model == "fisheye":
            if d_arr.shape != (4,):
                raise CalibrationError(f"fisheye D needs 4 coefficients k1..k4, got {d_arr.size}", field="D")
            k1, k2, k3, k4 = (float(v) for v in d_arr)
            return FisheyeCamera(intrinsics, size, (k1, k2, k3, k4))
        if model == "pinhole":
            if not 4 <= d_arr.size <= 5:
                raise CalibrationError(f"pinhole D needs k1, k2, p1, p2[, k3], got {d_arr.size} values", field="D")
            return PinholeCamera(intrinsics, size, RadTan(*(float(v) for v in d_arr)))
    except ValueError as exc:
        raise CalibrationError(str(exc), field="K") from exc
    raise CalibrationError(f"model must be one of {', '.join(MODELS)}, got {model!r}", field="model")


# --- corners ---------------------------------------------------------------------------------


def detect_views(paths: Sequence[str | Path], board: Board) -> tuple[list[View], list[dict[str, Any]], tuple[int, int]]:
    """Board corners in every image: (views with a board, dropped views with reasons, image size hw).
    All images must have the same size (one camera)."""
    views: list[View] = []
    dropped: list[dict[str, Any]] = []
    size_hw: tuple[int, int] | None = None
    for number, path in enumerate(paths, start=1):
        gray = np.asarray(cv2.cvtColor(read_image(path), cv2.COLOR_RGB2GRAY), dtype=np.uint8)
        this_hw = (int(gray.shape[0]), int(gray.shape[1]))
        if size_hw is None:
            size_hw = this_hw
        elif this_hw != size_hw:
            raise CalibrationError(f"{path}: image is {this_hw[1]}x{this_hw[0]} (w x h), the first was {size_hw[1]}x{size_hw[0]}")
        # The fast check rejects views without a board cheaply; a board it misses gets the full search.
        corners = cvcompat.find_chessboard(gray, (board.cols, board.rows), fast_check=True)
        if corners is None:
            corners = cvcompat.find_chessboard(gray, (board.cols, board.rows), fast_check=False)
        problem = (
            f"no {board.cols}x{board.rows} inner-corner board found" if corners is None else corner_grid_problem(corners, board)
        )
        log.info("corners %d/%d %s: %s", number, len(paths), path, problem or "found")
        if problem or corners is None:
            dropped.append({"image": str(path), "reason": problem})
        else:
            views.append(View(str(path), corners))
    if size_hw is None:
        raise CalibrationError("no images given")
    return views, dropped, size_hw


def corner_grid_problem(corners: FloatArray, board: Board) -> str | None:
    """What is wrong with a set of detected corners as a view of the board, or None.

    Any view of a real board keeps the grid's orientation: every quad of four neighbouring corners
    turns the same way and has an area. A folded or degenerate grid (a false detection, a board seen
    edge-on) would only mislead OpenCV's calibration, which then blames good views.
    """
    grid = corners.reshape(board.rows, board.cols, 2)
    a, b, c, d = grid[:-1, :-1], grid[:-1, 1:], grid[1:, 1:], grid[1:, :-1]

    def cross(p: FloatArray, q: FloatArray) -> FloatArray:
        return np.asarray(p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0])

    area = 0.5 * (cross(a, b) + cross(b, c) + cross(c, d) + cross(d, a))  # (rows - 1, cols - 1) shoelace
    if not ((area > 0).all() or (area < 0).all()):
        return "corners do not form a grid (some quads are folded over)"
    if np.abs(area).min() < _MIN_QUAD_AREA_PX2:
        return f"board seen edge-on or too small (a square covers under {_MIN_QUAD_AREA_PX2} px^2)"
    return None


# --- calibration ------------------------------------------------------------------------------

OpenCvFit = tuple[float, FloatArray, FloatArray, list[FloatArray], list[FloatArray]]
Runner = Callable[[Sequence[View]], OpenCvFit]


def calibrate_views(
    views: Sequence[View], object_points: FloatArray, image_size_hw: tuple[int, int], model: ModelName
) -> IntrinsicsResult:
    """Calibrate from corner sets; views that OpenCV cannot use are dropped one by one, with reasons.

    Fisheye runs in two stages. OpenCV's fisheye calibration re-initialises every view's pose at
    every iteration from the current distortion; started from zero distortion with all four
    coefficients free, a few oblique views can swing k3, k4 far enough that undistorting another view
    gives NaN, and the run fails or drops good views (on the 24-view real set it dropped 3 to 10 views,
    or failed outright, depending on the square size and the corner refinement window). So stage one
    fits k1, k2 only, and stage two starts from it (USE_INTRINSIC_GUESS) with all four free and every
    view back in.
    """
    if model not in MODELS:
        raise CalibrationError(f"model must be one of {', '.join(MODELS)}, got {model!r}", field="model")

    def fisheye(flags: int, guess: tuple[FloatArray, FloatArray] | None) -> Runner:
        return lambda vs: cvcompat.fisheye_calibrate(
            [object_points] * len(vs), [v.image_points for v in vs], image_size_hw, flags, guess
        )

    if model == "fisheye":
        stage_one, _, dropped_one = _fit_dropping(
            views, fisheye(FISHEYE_FLAGS | cvcompat.fisheye_flags("FIX_K3", "FIX_K4"), None)
        )
        log.info("fisheye stage 1 (k1, k2): rms %.3f px, %d views dropped", stage_one[0], len(dropped_one))
        guess = (stage_one[1], stage_one[2])
        fit, used, dropped = _fit_dropping(views, fisheye(FISHEYE_FLAGS | cvcompat.fisheye_flags("USE_INTRINSIC_GUESS"), guess))
    else:
        fit, used, dropped = _fit_dropping(
            views, lambda vs: cvcompat.pinhole_calibrate([object_points] * len(vs), [v.image_points for v in vs], image_size_hw)
        )
    rms, k, d, rvecs, tvecs = fit
    log.info("%s calibration from %d views: rms %.3f px", model, len(used), rms)
    per_view = _per_view_rms(camera_from_matrices(model, k, d, image_size_hw), used, object_points, rvecs, tvecs)
    return IntrinsicsResult(model, k, d, image_size_hw, rms, per_view, dropped)


def _fit_dropping(views: Sequence[View], run: Runner) -> tuple[OpenCvFit, list[View], list[dict[str, Any]]]:
    """``run`` on all views; while OpenCV fails, drop the view it is due to and try again."""
    active = list(views)
    dropped: list[dict[str, Any]] = []
    while True:
        if len(active) < MIN_VIEWS:
            raise CalibrationError(
                f"need at least {MIN_VIEWS} usable board views, have {len(active)}"
                + (f" (dropped: {'; '.join(d['image'] + ': ' + d['reason'] for d in dropped)})" if dropped else "")
            )
        try:
            return run(active), active, dropped
        except cv2.error as exc:
            bad, reason = _blame(exc, active, run)
            log.info("dropping view %s: %s", bad.name, reason)
            dropped.append({"image": bad.name, "reason": reason})
            active.remove(bad)


def _per_view_rms(
    camera: CameraModel, views: Sequence[View], object_points: FloatArray, rvecs: list[FloatArray], tvecs: list[FloatArray]
) -> list[dict[str, Any]]:
    """Each view's RMS reprojection error, through the project's own camera model (which also checks
    that it reads OpenCV's K and D the way OpenCV does)."""
    records = []
    for view, rvec, tvec in zip(views, rvecs, tvecs, strict=True):
        pixels, _ = camera.project(apply_rigid(rigid(cvcompat.rotation_from_rvec(rvec), tvec), object_points))
        error = np.linalg.norm(pixels - view.image_points, axis=-1)
        records.append({"image": view.name, "rms_px": round(float(np.sqrt(np.mean(error**2))), 4)})
    return records


def _opencv_reason(exc: cv2.error) -> str:
    """The informative part of an OpenCV error: '(-3:Internal error) ... in function ...'."""
    lines = str(exc).strip().splitlines()
    return lines[-1].split(" error: ", 1)[-1] if lines else repr(exc)


def _blame(exc: cv2.error, active: list[View], run: Runner) -> tuple[View, str]:
    """The view an OpenCV calibration failure is due to, and why."""
    reason = _opencv_reason(exc)
    match = re.search(r"input array (\d+)", reason)
    if match and int(match.group(1)) < len(active):
        return active[int(match.group(1))], "ill-conditioned in OpenCV's fisheye extrinsic initialisation (CALIB_CHECK_COND)"
    # OpenCV did not name the view: leave each out in turn and drop the one whose absence fits best.
    best: tuple[float, View] | None = None
    for view in active:
        try:
            rms = run([v for v in active if v is not view])[0]
        except cv2.error:
            continue
        if best is None or rms < best[0]:
            best = (rms, view)
    if best is None:
        raise CalibrationError(f"OpenCV calibration fails whichever view is left out: {reason}") from exc
    return best[1], f"OpenCV failed with it ({reason}) and succeeds without it"


def calibrate_images(paths: Sequence[str | Path], board: Board, model: ModelName) -> IntrinsicsResult:
    """Corners from every image, then the calibration (dropped views carry their reasons)."""
    views, no_board, size_hw = detect_views(paths, board)
    log.info("board found in %d of %d images", len(views), len(paths))
    result = calibrate_views(views, board.object_points(), size_hw, model)
    return IntrinsicsResult(
        result.model, result.k, result.d, size_hw, result.rms_px, result.views_used, no_board + result.views_dropped, board
    )


# --- CAM.json ---------------------------------------------------------------------------------


def rig_camera_block(model: str, k: Any, d: Any, image_size_hw: Sequence[int]) -> dict[str, Any]:
    """The ``image_size_hw`` and ``model`` keys of a rig file camera for these intrinsics."""
    k_arr = np.asarray(k, dtype=np.float64)
    d_list = [float(v) for v in np.asarray(d, dtype=np.float64).reshape(-1)]
    block: dict[str, Any] = {"type": model, "fx": float(k_arr[0, 0]), "fy": float(k_arr[1, 1])}
    block |= {"cx": float(k_arr[0, 2]), "cy": float(k_arr[1, 2])}
    block |= {"k": d_list} if model == "fisheye" else {"dist": d_list}
    return {"image_size_hw": [int(image_size_hw[0]), int(image_size_hw[1])], "model": block}


def intrinsics_to_json(result: IntrinsicsResult) -> dict[str, Any]:
    h, w = result.image_size_hw
    return {
        "model": result.model,
        "K": result.k.tolist(),
        "D": result.d.reshape(-1).tolist(),
        "D_meaning": "fisheye k1..k4 (Kannala-Brandt)" if result.model == "fisheye" else "k1, k2, p1, p2, k3",
        "image_size_hw": [h, w],
        "image_size_wh": [w, h],
        "rms_px": result.rms_px,
        "views_used": result.views_used,
        "views_dropped": result.views_dropped,
        "board": result.board.as_dict() if result.board else None,
        "opencv_version": cvcompat.OPENCV_VERSION,
        "rig_camera": rig_camera_block(result.model, result.k, result.d, result.image_size_hw),
    }


def camera_from_json(data: dict[str, Any]) -> CameraModel:
    """A camera model from a CAM.json mapping (``model``, ``K``, ``D``, ``image_size_hw``)."""
    if not isinstance(data, dict):
        raise CalibrationError(f"intrinsics must be a mapping, got {type(data).__name__}", field="intrinsics")
    missing = [key for key in ("model", "K", "D") if key not in data]
    if missing:
        raise CalibrationError(f"intrinsics lack {', '.join(missing)}", field="intrinsics")
    if "image_size_hw" in data:
        size = data["image_size_hw"]
    elif "image_size_wh" in data:
        size = list(data["image_size_wh"])[::-1]
    else:
        raise CalibrationError("intrinsics lack image_size_hw (height, width)", field="intrinsics")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise CalibrationError(
            f"image_size_hw must be two positive integers (height, width), got {size!r}", field="image_size_hw"
        )
    try:
        return camera_from_matrices(str(data["model"]), data["K"], data["D"], (size[0], size[1]))
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"unusable K or D: {exc}", field="intrinsics") from exc
