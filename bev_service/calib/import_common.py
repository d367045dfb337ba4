"""What the rig importers share: checked matrices, the validated round trip, an ego box from poses.

Every importer builds a ``Rig`` and a description, then passes both through the rig file's own YAML
round trip, so an imported rig is exactly what ``load_rig`` reads back from the file it writes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from bev_service.calib.rigfile import load_rig, rig_from_yaml, rig_to_yaml, save_rig
from bev_service.errors import CalibrationError
from bev_service.geometry.cameras import FloatArray
from bev_service.geometry.grid import BevGrid, EgoBox
from bev_service.geometry.rig import Camera, Rig

# Camera positions sit on the body's outline (bumpers, mirrors), so the box they span is a fair
# stand-in for the footprint when the source gives none; this margin (in the rig's units) keeps the
# box from collapsing when two cameras share a coordinate.
MIN_EGO_HALF_SIZE = 1e-3
# A grid for formats that give none: this square about the vehicle's centre.
DEFAULT_CELL_SIZE_M = 0.05
DEFAULT_HALF_EXTENT_M = 10.0


@dataclass(frozen=True)
class ImportedRig:
    """An imported rig and the description written into its file (where it came from, what was assumed)."""

    rig: Rig
    description: str


def validated(rig: Rig, description: str) -> ImportedRig:
    """Round-trip ``rig`` through the rig file format so every check of ``load_rig`` runs on it."""
    return ImportedRig(rig_from_yaml(rig_to_yaml(rig, description)), description)


def write_imported(imported: ImportedRig, path: str | Path) -> Rig:
    """Write the rig file (atomically) and read it back; returns the rig as loaded from disk."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_rig(imported.rig, target, imported.description)
    return load_rig(target)


def checked_matrix(value: Any, shape: tuple[int, ...], *, camera: str | None, field: str) -> FloatArray:
    """``value`` as a finite float array of exactly ``shape``, else a CalibrationError naming the field."""
    expected = f"a {'x'.join(map(str, shape))} matrix" if shape else "a number"
    if value is None:
        raise CalibrationError(f"missing (expected {expected})", camera=camera, field=field)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"expected {expected} of numbers: {exc}", camera=camera, field=field) from exc
    if array.shape != shape:
        got = f"shape {'x'.join(map(str, array.shape))}" if array.ndim else "a number"
        raise CalibrationError(f"expected {expected}, got {got}", camera=camera, field=field)
    if not np.isfinite(array).all():
        raise CalibrationError("contains non-finite values", camera=camera, field=field)
    return array


def require(mapping: Any, key: str, *, camera: str | None, field: str | None = None) -> Any:
    """``mapping[key]``, or a CalibrationError saying the key is missing (``field`` names its full path)."""
    if not isinstance(mapping, dict):
        parent = (field or key).rpartition(".")[0] or "(root)"
        raise CalibrationError(f"expected a mapping, got {type(mapping).__name__}", camera=camera, field=parent)
    if key not in mapping or mapping[key] is None:
        raise CalibrationError("missing", camera=camera, field=field or key)
    return mapping[key]


def read_json(path: Path, *, camera: str | None = None) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(f"cannot read {path}: {exc.strerror}", camera=camera, field="file") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{path} is not valid JSON: {exc}", camera=camera, field="file") from exc


def ego_from_camera_positions(positions_xy: ArrayLike) -> EgoBox:
    """The x/y bounding box of the camera positions (vehicle frame)."""
    xy = np.asarray(positions_xy, dtype=np.float64).reshape(-1, 2)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    centre, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, MIN_EGO_HALF_SIZE)
    return EgoBox(
        (float(centre[0] - half[0]), float(centre[0] + half[0])), (float(centre[1] - half[1]), float(centre[1] + half[1]))
    )


def square_grid(centre_xy: ArrayLike, cell_size_m: float, half_extent_m: float) -> BevGrid:
    """A square grid of whole cells reaching ``half_extent_m`` each way from ``centre_xy`` (snapped to the cell size)."""
    cx, cy = (round(float(c) / cell_size_m) * cell_size_m for c in np.asarray(centre_xy, dtype=np.float64))
    half = round(half_extent_m / cell_size_m) * cell_size_m
    return BevGrid((cx - half, cx + half), (cy - half, cy + half), cell_size_m)


def posed_rig(rig_id: str, cameras: tuple[Camera, ...], origin_note: str, cell_size_m: float, half_extent_m: float) -> Rig:
    """A rig of posed cameras for a format that gives no grid and no footprint: the ego box from the camera
    positions, a ``square_grid`` about its centre. CalibrationError for a camera given twice."""
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        raise CalibrationError(f"two files are of the same camera: {names}", field="name")
    ego = ego_from_camera_positions([c.vehicle_from_camera[:2, 3] for c in cameras if c.vehicle_from_camera is not None])
    centre = (sum(ego.x_range_m) / 2, sum(ego.y_range_m) / 2)
    return Rig(rig_id, "1", cameras, square_grid(centre, cell_size_m, half_extent_m), ego, origin_note=origin_note)


def rig_id_from(text: str, fallback: str) -> str:
    """A valid rig id (``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``) made from a file or folder name."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._")[:64]
    return cleaned if cleaned else fallback


def camera_error(exc: ValueError, *, camera: str, field: str) -> CalibrationError:
    """A geometry constructor's ValueError as a CalibrationError naming the camera and field."""
    return CalibrationError(str(exc), camera=camera, field=field)
