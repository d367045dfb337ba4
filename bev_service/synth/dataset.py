"""Synthetic data sets on disk: frame sets drawn from seeded worlds, or a drive, and their manifest.

Layout of a data set folder::

    manifest.json            rig, grid, class table, seed, files, one entry per frame set (in order)
    bev_unknown.png          255 where no camera of the rig sees the cell, else 0 (the same for all)
    000000/<camera>.jpg      the camera's image (RGB JPEG)
    000000/<camera>_labels.png   class ids, single channel
    000000/<camera>_body.png     255 where the pixel sees the vehicle's own body (labelled background), else 0
    000000/bev_truth.png     the true BEV grid (class ids, 254 = ego), complete everywhere
    000000/bev_oracle.png    the projector's warp of the true labels (255 = unknown)
    000001/...

The manifest is written last, so a folder without one is incomplete. Everything is a function of
the seed (and the rig): the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bev_service.classes import class_table
from bev_service.errors import FrameError
from bev_service.geometry.rig import Rig
from bev_service.imageio import read_image, read_labels, write_png
from bev_service.synth.drive import DriveFrame, DrivePlan, iter_drive
from bev_service.synth.render import RenderedFrameSet, renderer_for
from bev_service.synth.world import SyntheticWorld, WorldConfig

MANIFEST = "manifest.json"
FORMAT = "bev-synth/1"
UNKNOWN_FILE = "bev_unknown.png"
FRAME_SETS_PER_WORLD = 8
log = logging.getLogger(__name__)


def folder_name(index: int) -> str:
    return f"{index:06d}"


def world_seed(seed: int, world_index: int) -> int:
    """The seed of the ``world_index``-th world of a data set with ``seed``."""
    return int(np.random.SeedSequence([seed, world_index, 5]).generate_state(1)[0] % (2**31))


def iter_frame_sets(
    rig: Rig,
    *,
    count: int,
    seed: int,
    scale: float = 1.0,
    per_world: int = FRAME_SETS_PER_WORLD,
    config: WorldConfig | None = None,
    start: int = 0,
) -> Iterator[tuple[int, int, RenderedFrameSet]]:
    """(index, world seed, frame set) for frame sets ``start`` to ``count - 1``: a new world every
    ``per_world`` frame sets, each frame set at a random pose, moment and appearance in it."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if per_world < 1:
        raise ValueError(f"per_world must be at least 1, got {per_world}")
    renderer = renderer_for(rig, scale)
    world: SyntheticWorld | None = None
    for index in range(start, count):
        w_seed = world_seed(seed, index // per_world)
        if world is None or world.seed != w_seed:
            world = SyntheticWorld(w_seed, config)
        rng = np.random.default_rng(np.random.SeedSequence([seed, index, 7]))
        pose = world.sample_pose(rng)
        time_s = float(rng.uniform(0.0, 120.0))
        frame_set = renderer.render(world, pose, time_s=time_s, seed=int(rng.integers(2**31)))
        yield index, w_seed, frame_set


def write_frame_set(folder: Path, frame_set: RenderedFrameSet) -> dict[str, Any]:
    """The files of one frame set; returns their names per camera and for the grids."""
    folder.mkdir(parents=True, exist_ok=True)
    cameras: dict[str, dict[str, str]] = {}
    for name in frame_set.camera_names:
        image, labels, body = f"{name}.jpg", f"{name}_labels.png", f"{name}_body.png"
        (folder / image).write_bytes(frame_set.jpeg[name])
        write_png(folder / labels, frame_set.labels[name])
        write_png(folder / body, np.where(frame_set.body[name], 255, 0).astype(np.uint8))
        cameras[name] = {"image": image, "labels": labels, "body": body}
    write_png(folder / "bev_truth.png", frame_set.bev_truth)
    write_png(folder / "bev_oracle.png", frame_set.bev_oracle)
    return {"cameras": cameras, "bev_truth": "bev_truth.png", "bev_oracle": "bev_oracle.png"}


def _entry(name: str, frame_set: RenderedFrameSet, files: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        **extra,
        "time_s": round(frame_set.time_s, 6),
        "vehicle_pose": frame_set.pose.as_dict(),
        "appearance": frame_set.appearance.as_dict(),
        "files": files,
    }


def manifest_head(rig: Rig, rig_path: str, *, seed: int, scale: float, kind: str) -> dict[str, Any]:
    size = renderer_for(rig, scale).image_size_hw
    return {
        "format": FORMAT,
        "kind": kind,
        "rig": {"id": rig.rig_id, "version": rig.version, "path": rig_path, "fingerprint": rig.fingerprint},
        "seed": seed,
        "scale": scale,
        "image_size_hw": list(size),
        "cameras": list(rig.camera_names),
        "grid": rig.grid.metadata(),
        "classes": class_table(),
        "unknown_mask": UNKNOWN_FILE,
        "layout": {
            "image": "<frame set>/<camera>.jpg",
            "labels": "<frame set>/<camera>_labels.png",
            "body": "<frame set>/<camera>_body.png",
            "bev_truth": "<frame set>/bev_truth.png",
            "bev_oracle": "<frame set>/bev_oracle.png",
        },
    }


def _write_common(out: Path, rig: Rig, scale: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    unknown = renderer_for(rig, scale).unknown
    write_png(out / UNKNOWN_FILE, np.where(unknown, 255, 0).astype(np.uint8))


def _finish(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out / MANIFEST)
    return manifest


Progress = Callable[[int], None]


def write_dataset(
    out: Path, rig: Rig, rig_path: str, *, count: int, seed: int, scale: float = 1.0, progress: Progress | None = None
) -> dict[str, Any]:
    """Render and write ``count`` frame sets; returns the manifest."""
    _write_common(out, rig, scale)
    manifest = manifest_head(rig, rig_path, seed=seed, scale=scale, kind="frame_sets")
    manifest["frame_sets_per_world"] = FRAME_SETS_PER_WORLD
    entries = []
    for index, w_seed, frame_set in iter_frame_sets(rig, count=count, seed=seed, scale=scale):
        name = folder_name(index)
        files = write_frame_set(out / name, frame_set)
        entries.append(_entry(name, frame_set, files, world_seed=w_seed))
        if progress is not None:
            progress(1)
    manifest["frame_sets"] = entries
    return _finish(out, manifest)


def write_drive(
    out: Path,
    rig: Rig,
    rig_path: str,
    plan: DrivePlan,
    *,
    seed: int,
    scale: float = 1.0,
    progress: Progress | None = None,
    on_frame: Callable[[DriveFrame], None] | None = None,
) -> dict[str, Any]:
    """Render and write a drive through the world of ``seed``; returns the manifest. ``on_frame`` sees each frame
    set as it is written (to record the same drive elsewhere without rendering it twice)."""
    _write_common(out, rig, scale)
    w_seed = world_seed(seed, 0)
    world = SyntheticWorld(w_seed)
    manifest = manifest_head(rig, rig_path, seed=seed, scale=scale, kind="drive")
    manifest["drive"] = {
        "world_seed": w_seed,
        "frames": plan.frames,
        "speed_mps": plan.speed_mps,
        "fps": plan.fps,
        "route": "the ring road's lane, counter-clockwise",
        "route_length_m": round(world.route.length, 6),
        "start_s_m": plan.start_s_m,
    }
    entries = []
    for frame in iter_drive(rig, world, plan, seed=seed, scale=scale):
        name = folder_name(frame.index)
        files = write_frame_set(out / name, frame.frame_set)
        entries.append(_entry(name, frame.frame_set, files, timestamp_s=round(frame.timestamp_s, 6)))
        if on_frame is not None:
            on_frame(frame)
        if progress is not None:
            progress(1)
    manifest["frame_sets"] = entries
    return _finish(out, manifest)


# --- reading back --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFrameSet:
    """One frame set read from a data set folder (images and labels in rig camera order)."""

    name: str
    images: dict[str, NDArray[np.uint8]]
    labels: dict[str, NDArray[np.uint8]]
    bev_truth: NDArray[np.uint8]
    bev_oracle: NDArray[np.uint8]
    entry: dict[str, Any]
    body: dict[str, NDArray[np.bool_]] | None = None  # None for folders written before body masks were


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a data set folder, checked for the fields readers rely on."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise FrameError(f"{path}: not a readable synthetic data set manifest ({exc})") from exc
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("frame_sets"), list):
        raise FrameError(f"{path}: expected format {FORMAT!r} with a list of frame_sets")
    return dict(manifest)


def read_frame_set(folder: Path, entry: dict[str, Any]) -> StoredFrameSet:
    root = Path(folder) / entry["name"]
    files = entry["files"]
    cams = files["cameras"]
    return StoredFrameSet(
        name=entry["name"],
        images={name: read_image(root / f["image"]) for name, f in cams.items()},
        labels={name: read_labels(root / f["labels"]) for name, f in cams.items()},
        bev_truth=read_labels(root / files["bev_truth"]),
        bev_oracle=read_labels(root / files["bev_oracle"]),
        entry=entry,
        body=_body_masks(root, cams),
    )


def _body_masks(root: Path, cams: dict[str, dict[str, str]]) -> dict[str, NDArray[np.bool_]] | None:
    """Each camera's body mask, or None when the folder was written without them."""
    if not all("body" in f for f in cams.values()):
        return None
    return {name: read_labels(root / f["body"]) > 0 for name, f in cams.items()}
