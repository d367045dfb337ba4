"""Importer for the OpenCV FileStorage surround-view YAML (neozhaoliang/surround-view-system-introduction).

The source's pipeline per camera: fisheye undistortion to a pinhole image with K' (K with fx, fy
scaled by ``scale_xy`` and the principal point moved by ``shift_xy``), then ``project_matrix`` (a
homography from that undistorted image to the camera's projected strip), then a quarter or half turn
of the strip onto one common canvas of 1 cm pixels, forward up, the vehicle's left on the left. The
car box sits in the middle of the canvas. We compose

    vehicle_from_canvas @ canvas_from_strip @ strip_from_undistorted(project_matrix)

into one ``ground_from_image`` homography per camera, with ``undistorted_k`` = K'.

Pixel convention (OpenCV's, for ``warpPerspective``, ``remap``, ``transpose`` and flips alike): the
centre of pixel (u, v) is at (u, v), so an image w pixels wide spans [-0.5, w - 0.5]. Flipping an
axis of n pixels maps u to n - 1 - u. The grid's cell edges fall on the canvas's pixel edges: canvas
pixel (u, v) is grid cell (row v, col u), centred at x = (car_centre_v - (v + 0.5)) * 0.01 m,
y = (car_centre_u - (u + 0.5)) * 0.01 m, where the car centre (600, 800) is a pixel *edge*: the
car box covers pixels 500..699 by 550..1049, symmetric about it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bev_service.calib.import_common import ImportedRig, camera_error, checked_matrix, rig_id_from, validated
from bev_service.errors import CalibrationError
from bev_service.geometry.cameras import FisheyeCamera, FloatArray, Intrinsics
from bev_service.geometry.grid import BevGrid, EgoBox
from bev_service.geometry.rig import Camera, GroundHomography, Rig

logger = logging.getLogger(__name__)

CAMERA_NAMES = ("front", "back", "left", "right")


@dataclass(frozen=True)
class SurroundCanvas:
    """The source's stitched canvas (its ``param_settings.py``): total size, car box, pixel size.

    The car box is symmetric (right = width - left, bottom = height - top), as in the source.
    """

    width_px: int = 1200
    height_px: int = 1600
    car_left_px: int = 500
    car_top_px: int = 550
    metres_per_px: float = 0.01

    @property
    def car_right_px(self) -> int:
        return self.width_px - self.car_left_px

    @property
    def car_bottom_px(self) -> int:
        return self.height_px - self.car_top_px

    def strip_size_wh(self, camera: str) -> tuple[int, int]:
        """Size (width, height) of a camera's projected strip: front/back span the canvas's width
        above/below the car, left/right its height beside the car (before their quarter turn)."""
        if camera in ("front", "back"):
            return self.width_px, self.car_top_px
        return self.height_px, self.car_left_px

    def canvas_from_strip(self, camera: str) -> FloatArray:
        """3x3 affine map of strip pixel centres (s, t) to canvas pixel centres (u, v)."""
        w, h = self.width_px - 1, self.height_px - 1
        matrices = {
            "front": [[1, 0, 0], [0, 1, 0]],  # as is, at the top
            "back": [[-1, 0, w], [0, -1, h]],  # rotated 180 degrees, at the bottom
            "left": [[0, 1, 0], [-1, 0, h]],  # transpose, flip rows: u = t, v = h - s
            "right": [[0, -1, w], [1, 0, 0]],  # transpose, flip columns, at the right: u = w - t, v = s
        }
        return np.array([*matrices[camera], [0, 0, 1]], dtype=np.float64)

    def vehicle_from_canvas(self) -> FloatArray:
        """3x3 affine map of canvas pixel centres (u, v) to vehicle ground (x forward, y left) in metres."""
        s = self.metres_per_px
        centre_u, centre_v = self.width_px / 2, self.height_px / 2  # pixel edges: the car box's centre
        return np.array([[0, -s, (centre_v - 0.5) * s], [-s, 0, (centre_u - 0.5) * s], [0, 0, 1]], dtype=np.float64)

    def grid(self) -> BevGrid:
        half_x, half_y = self.height_px / 2 * self.metres_per_px, self.width_px / 2 * self.metres_per_px
        return BevGrid((-half_x, half_x), (-half_y, half_y), self.metres_per_px)

    def ego(self) -> EgoBox:
        s = self.metres_per_px
        half_x = (self.car_bottom_px - self.car_top_px) / 2 * s
        half_y = (self.car_right_px - self.car_left_px) / 2 * s
        return EgoBox((-half_x, half_x), (-half_y, half_y))


@dataclass(frozen=True)
class SurroundViewCamera:
    """One camera's FileStorage YAML, checked."""

    name: str
    k: FloatArray
    d: FloatArray
    size_wh: tuple[int, int]
    project_matrix: FloatArray
    scale_xy: tuple[float, float]
    shift_xy: tuple[float, float]

    @property
    def undistorted_k(self) -> FloatArray:
        """K' of the source's ``initUndistortRectifyMap`` call."""
        k = self.k.copy()
        k[0, 0] *= self.scale_xy[0]
        k[1, 1] *= self.scale_xy[1]
        k[0, 2] += self.shift_xy[0]
        k[1, 2] += self.shift_xy[1]
        return k


def camera_yaml_folder(folder: Path) -> Path:
    """``folder/yaml`` when it holds the camera files, else ``folder`` itself."""
    sub = folder / "yaml"
    return sub if (sub / f"{CAMERA_NAMES[0]}.yaml").is_file() else folder


def _read_nodes(path: Path, name: str) -> dict[str, np.ndarray | None]:
    if not path.is_file():
        raise CalibrationError(f"no calibration file {path}", camera=name, field="file")
    keys = ("camera_matrix", "dist_coeffs", "resolution", "project_matrix", "scale_xy", "shift_xy")
    try:
        storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
        if not storage.isOpened():
            raise CalibrationError(f"cannot open {path}", camera=name, field="file")
        nodes = {key: storage.getNode(key) for key in keys}
        values = {key: (None if node.empty() else node.mat()) for key, node in nodes.items()}
        storage.release()
    except (cv2.error, SystemError) as exc:  # OpenCV 5 raises SystemError around its parse errors
        cause = exc.__cause__ or exc
        raise CalibrationError(f"{path} is not a readable OpenCV FileStorage file: {cause}", camera=name, field="file") from exc
    return values


def read_camera_yaml(path: Path, name: str) -> SurroundViewCamera:
    """Read and check one camera's FileStorage YAML."""
    nodes = _read_nodes(path, name)
    k = checked_matrix(nodes["camera_matrix"], (3, 3), camera=name, field="camera_matrix")
    d = checked_matrix(_flat(nodes["dist_coeffs"]), (4,), camera=name, field="dist_coeffs")
    size = checked_matrix(_flat(nodes["resolution"]), (2,), camera=name, field="resolution")
    project = checked_matrix(nodes["project_matrix"], (3, 3), camera=name, field="project_matrix")
    # The source treats scale_xy and shift_xy as optional: (1, 1) and (0, 0) when absent.
    scale = checked_matrix(_flat(nodes["scale_xy"], default=(1.0, 1.0)), (2,), camera=name, field="scale_xy")
    shift = checked_matrix(_flat(nodes["shift_xy"], default=(0.0, 0.0)), (2,), camera=name, field="shift_xy")
    if not (size > 0).all() or not np.allclose(size, np.round(size)):
        raise CalibrationError(f"expected positive whole (width, height), got {size.tolist()}", camera=name, field="resolution")
    if abs(np.linalg.det(project)) < 1e-12 * max(1.0, float(np.abs(project).max())) ** 3:
        raise CalibrationError("is not invertible (determinant ~ 0)", camera=name, field="project_matrix")
    if not (scale > 0).all():
        raise CalibrationError(f"expected positive scales, got {scale.tolist()}", camera=name, field="scale_xy")
    return SurroundViewCamera(
        name, k, d, (int(size[0]), int(size[1])), project, (float(scale[0]), float(scale[1])), (float(shift[0]), float(shift[1]))
    )


def _flat(value: np.ndarray | None, default: tuple[float, float] | None = None) -> np.ndarray | None:
    if value is None:
        return None if default is None else np.asarray(default, dtype=np.float64)
    return np.asarray(value).reshape(-1)


def ground_from_undistorted(camera: SurroundViewCamera, canvas: SurroundCanvas) -> FloatArray:
    """Undistorted image px -> strip px -> canvas px -> vehicle ground metres, as one homography."""
    homography = canvas.vehicle_from_canvas() @ canvas.canvas_from_strip(camera.name) @ camera.project_matrix
    return homography / np.abs(homography).max()


def rig_camera(camera: SurroundViewCamera, canvas: SurroundCanvas) -> Camera:
    k = camera.k
    try:
        model = FisheyeCamera(
            Intrinsics(k[0, 0], k[1, 1], k[0, 2], k[1, 2]),
            (camera.size_wh[1], camera.size_wh[0]),
            (float(camera.d[0]), float(camera.d[1]), float(camera.d[2]), float(camera.d[3])),
        )
    except ValueError as exc:
        raise camera_error(exc, camera=camera.name, field="camera_matrix") from exc
    try:
        homography = GroundHomography(ground_from_undistorted(camera, canvas), camera.undistorted_k)
    except ValueError as exc:
        raise camera_error(exc, camera=camera.name, field="project_matrix") from exc
    return Camera(camera.name, model, ground_homography=homography)


def import_surround_view_yaml(
    folder: str | Path, *, rig_id: str | None = None, canvas: SurroundCanvas | None = None
) -> ImportedRig:
    """Read ``front/back/left/right.yaml`` from ``folder/yaml`` (or ``folder``) into a ground-homography rig
    on the source's 1 cm canvas grid (x in [-8, 8] m, y in [-6, 6] m)."""
    root = Path(folder)
    canvas = canvas or SurroundCanvas()
    yaml_dir = camera_yaml_folder(root)
    cameras = tuple(rig_camera(read_camera_yaml(yaml_dir / f"{name}.yaml", name), canvas) for name in CAMERA_NAMES)
    logger.debug("read %d cameras from %s", len(cameras), yaml_dir)
    rig = Rig(
        rig_id or rig_id_from(root.resolve().name, "surround-view"),
        "1",
        cameras,
        canvas.grid(),
        canvas.ego(),
        origin_note=(
            f"centre of the car box ({canvas.car_left_px}, {canvas.car_top_px})-({canvas.car_right_px}, "
            f"{canvas.car_bottom_px}) on the source's {canvas.width_px}x{canvas.height_px} canvas"
        ),
    )
    description = (
        f"Imported from the OpenCV FileStorage YAMLs in {yaml_dir.parent.name}/{yaml_dir.name} (surround-view-yaml). "
        "Per camera: ground_from_image = vehicle_from_canvas @ canvas_from_strip @ project_matrix, undistorted_k = K "
        "with fx, fy scaled by scale_xy and cx, cy moved by shift_xy. Strips turned onto the canvas as the source does "
        "(front as is, back rotated 180, left transposed then rows flipped, right transposed then columns flipped); "
        f"canvas {canvas.metres_per_px * 100:g} cm per pixel, forward up; grid = the canvas; ego = the car box."
    )
    return validated(rig, description)
