"""Measures for projecting imported rigs on real recordings and comparing with what others published:
grey images, band-pass, normalised cross-correlation, per-camera warps, and where figures and PNGs go.

Figures are printed by the tests (run with ``-s`` to see them) and kept, with PNGs for a person to look
at, in ``build/artifacts/importers/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Rig
from bev_service.imageio import read_image, write_png
from tests.conftest import REPO

Grey = NDArray[np.float32]

ARTIFACTS = REPO / "build" / "artifacts" / "importers"


def save_artifact(name: str, image: NDArray[np.uint8]) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    write_png(path, image)
    return path


def record(name: str, figures: dict[str, object]) -> None:
    """Keep a test's figures beside the PNGs (pytest hides the printed ones unless run with -s)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


def grey(rgb: NDArray[np.uint8]) -> Grey:
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), dtype=np.float32)


def band_pass(image: Grey, fine: float, coarse: float) -> Grey:
    """Difference of Gaussians: keeps markings and edges, drops each image's own brightness and the
    source's per-region blending offsets."""
    return np.asarray(cv2.GaussianBlur(image, (0, 0), fine) - cv2.GaussianBlur(image, (0, 0), coarse), dtype=np.float32)


def ncc(a: Grey, b: Grey, mask: NDArray[np.bool_]) -> float:
    """Normalised cross-correlation over ``mask``."""
    x, y = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def camera_images(folder: Path, rig: Rig, pattern: str) -> NDArray[np.uint8]:
    """(N, h, w, 3) images in rig order; ``pattern`` formats the camera name into a path."""
    return np.stack([read_image(folder / pattern.format(name=name, Name=name.capitalize())) for name in rig.camera_names])


def per_camera_warp(projector: BevProjector, index: int, image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """One camera's own view of every cell it sees (not only those it owns), from the projector's tables."""
    uv = np.nan_to_num(projector.tables.pixel_uv[index], nan=-1e4).astype(np.float32)
    return np.asarray(cv2.remap(image, uv[..., 0].copy(), uv[..., 1].copy(), cv2.INTER_LINEAR))
