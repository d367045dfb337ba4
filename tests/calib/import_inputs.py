"""Synthetic calibration files in each importer's source format, shared by the importer tests.

- surround-view-yaml: one OpenCV FileStorage YAML per camera (``write_surround_yaml``).
- kdt-json: a car with mirror cameras (``KDT_POSES``) in any ground frame and units (``kdt_document``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bev_service.geometry.transforms import invert_rigid, rigid, vehicle_from_camera_mount

# --- surround-view-yaml -------------------------------------------------------------------------

SV_NAMES = ("front", "back", "left", "right")


def write_surround_yaml(folder: Path, name: str, **overrides: Any) -> None:
    """One camera's OpenCV FileStorage YAML as the source writes it; an override of None leaves the key out."""
    nodes: dict[str, Any] = {
        "camera_matrix": np.array([[300.0, 0, 480], [0, 300, 320], [0, 0, 1]]),
        "dist_coeffs": np.zeros((4, 1)),
        "resolution": np.array([[960], [640]], dtype=np.int32),
        "project_matrix": np.eye(3),
        "scale_xy": np.array([[1.0], [1.0]], dtype=np.float32),
        "shift_xy": np.array([[0.0], [0.0]], dtype=np.float32),
    }
    nodes.update(overrides)
    storage = cv2.FileStorage(str(folder / f"{name}.yaml"), cv2.FILE_STORAGE_WRITE)
    for key, value in nodes.items():
        if value is not None:
            storage.write(key, np.asarray(value))
    storage.release()


# --- kdt-json -------------------------------------------------------------------------------------

# Where the synthetic rig's cameras are (vehicle frame, metres): a car with mirror cameras.
KDT_POSES = {
    "front": vehicle_from_camera_mount((2.0, 0.0, 0.8), yaw_deg=0, pitch_down_deg=30),
    "left": vehicle_from_camera_mount((0.9, 1.0, 1.0), yaw_deg=90, pitch_down_deg=45),
    "back": vehicle_from_camera_mount((-2.2, 0.1, 0.9), yaw_deg=180, pitch_down_deg=35),
    "right": vehicle_from_camera_mount((0.9, -1.0, 1.0), yaw_deg=-90, pitch_down_deg=45),
}
AXIS_VECTORS = {
    "forward": (1, 0, 0),
    "back": (-1, 0, 0),
    "left": (0, 1, 0),
    "right": (0, -1, 0),
    "up": (0, 0, 1),
    "down": (0, 0, -1),
}


def kdt_document(ground_axes: dict[str, str], units_m: float | None, file_units_per_m: float) -> dict[str, Any]:
    """A kdt-json file describing KDT_POSES in a ground frame with ``ground_axes``, lengths in file units."""
    vehicle_from_ground = rigid(np.array([AXIS_VECTORS[ground_axes[a]] for a in "xyz"], dtype=float).T, np.zeros(3))
    cameras = {}
    for name, pose in KDT_POSES.items():
        ground_from_camera = invert_rigid(vehicle_from_ground) @ pose
        ground_from_camera[:3, 3] *= file_units_per_m
        cameras[name] = {
            "K": [[300.0, 0, 640], [0, 300, 400], [0, 0, 1]],
            "D": [0.01, -0.002, 0.0, 0.0],
            "T_camera_from_ground": invert_rigid(ground_from_camera).tolist(),
        }
    half = 10.0 * file_units_per_m
    return {
        "format": "kdt-json",
        "units_m": units_m,
        "ground_axes": ground_axes,
        "grid": {"x_range": [-half, half], "y_range": [-half, half], "cell_size": 0.1 * file_units_per_m},
        "image_size_wh": [1280, 800],
        "cameras": cameras,
    }


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def kdt_broken(tmp_path: Path, edit: Any) -> Path:
    """The standard kdt-json document (metres, ground x right / y forward / z up) after ``edit``, written."""
    data = kdt_document({"x": "right", "y": "forward", "z": "up"}, 1.0, 1.0)
    edit(data)
    return write_json(tmp_path / "broken.json", data)
