"""Frame sources from the synthetic world: rendered on the fly, or read from a ``bev synth`` folder.

Both give ``FrameSet``s at the network's input size (images area-averaged, labels nearest) with the
true BEV grid attached. Rendering happens once, up front, at the scale that gives the input size
directly (the default rig's 960x640 at scale 0.5 is 480x320); folders are decoded on first use and
kept in memory.

With a ``cache_dir``, a rendered data set is also written there as one uncompressed ``.npz`` and read
back by the next command that asks for the same one (``make train`` renders the 256 training frame sets
once for ``bev train`` and ``bev prune``: 98 s on 2 cores, against under 2 s to read 670 MB back). The
file's name holds a digest of everything the pixels depend on: the rig file, the count, the seed, the
input size, and the source of the renderer, of the geometry and of the cache's own functions. Any change
to them renders afresh and replaces the stale file of the same data set; an unreadable file is rendered
again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bev_service.calib.rigfile import load_rig
from bev_service.errors import FrameError
from bev_service.geometry.rig import Rig
from bev_service.training.data import ArraySource, CachedSource, FrameSet, FrameSource, resized

log = logging.getLogger(__name__)

SYNTH = "synth"
_PACKAGE = Path(__file__).resolve().parents[1]  # bev_service/
# What a rendered frame set depends on, besides the rig file and the render settings: these files, and the
# functions of this module that render, write and read a cached set (``_CACHE_FUNCTIONS``; the rest of the
# module, folders and evaluation sizes, can change without rendering 670 MB again).
RENDER_CODE = ("synth", "geometry", "calib", "classes.py", "runtime/resize.py", "training/data.py")


def render_source(rig: Rig, *, count: int, seed: int, input_size_hw: tuple[int, int], progress: bool = False) -> ArraySource:
    """``count`` frame sets of the synthetic worlds of ``seed``, rendered now (data set ``seed`` of ``bev synth``)."""
    from bev_service.synth import iter_frame_sets

    scale = input_size_hw[0] / rig.cameras[0].image_size_hw[0]
    frames = []
    rendered = iter_frame_sets(rig, count=count, seed=seed, scale=scale)
    for index, world_seed, fs in tqdm(rendered, total=count, desc=f"render seed {seed}", unit="frame set", disable=not progress):
        images = np.stack([fs.images[name] for name in fs.camera_names])
        frame = FrameSet(
            images=images, labels=fs.label_stack(), bev=fs.bev_truth, name=f"seed{seed}-{index:06d}-world{world_seed}"
        )
        frames.append(resized(frame, input_size_hw))
    return ArraySource(frames)


class DirectorySource:
    """The frame sets of a ``bev synth`` folder, in manifest order, resized to the input size.

    With ``resize=False`` they keep the size they were written at (the camera's, for a folder rendered at scale 1):
    ``bev eval --labels-at frame`` scores networks of different input sizes against one reference.
    """

    def __init__(
        self, folder: str | Path, input_size_hw: tuple[int, int], rig: Rig | None = None, *, resize: bool = True
    ) -> None:
        from bev_service.synth import read_manifest

        self.folder = Path(folder)
        self.resize = resize
        self.manifest = read_manifest(self.folder)
        self.input_size_hw = input_size_hw
        self.cameras = tuple(self.manifest["cameras"])
        if rig is not None and self.cameras != rig.camera_names:
            raise FrameError(f"{self.folder}: cameras {list(self.cameras)} differ from the rig's {list(rig.camera_names)}")
        if not self.manifest["frame_sets"]:
            raise FrameError(f"{self.folder}: the manifest lists no frame sets")

    def __len__(self) -> int:
        return len(self.manifest["frame_sets"])

    def __getitem__(self, index: int) -> FrameSet:
        from bev_service.synth import read_frame_set

        stored = read_frame_set(self.folder, self.manifest["frame_sets"][index])
        frame = FrameSet(
            images=np.stack([stored.images[name] for name in self.cameras]),
            labels=np.stack([stored.labels[name] for name in self.cameras]),
            bev=stored.bev_truth,
            name=stored.name,
        )
        return resized(frame, self.input_size_hw) if self.resize else frame


def render_digest(rig_path: str | Path, *, count: int, seed: int, input_size_hw: tuple[int, int]) -> str:
    """A digest of everything ``render_source``'s pixels depend on (see the module's docstring)."""
    h = hashlib.sha256(json.dumps({"count": count, "seed": seed, "input_size_hw": list(input_size_hw)}).encode())
    h.update(Path(rig_path).read_bytes())
    for entry in RENDER_CODE:
        path = _PACKAGE / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(file.relative_to(_PACKAGE).as_posix().encode())
            h.update(file.read_bytes())
    for function in _CACHE_FUNCTIONS:
        h.update(inspect.getsource(function).encode())
    return h.hexdigest()[:20]


def cached_render(
    rig_path: str | Path,
    cache_dir: str | Path,
    *,
    count: int,
    seed: int,
    input_size_hw: tuple[int, int],
    progress: bool = False,
) -> ArraySource:
    """``render_source``, read from ``cache_dir`` when an earlier call rendered the same data set, else
    rendered and written there (atomically: a reader never sees half a file)."""
    digest = render_digest(rig_path, count=count, seed=seed, input_size_hw=input_size_hw)
    stem = f"render-seed{seed}-n{count}-{input_size_hw[1]}x{input_size_hw[0]}"
    path = Path(cache_dir) / f"{stem}-{digest}.npz"
    if path.is_file():
        try:
            return _read_rendered(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("%s is unreadable (%s); rendering again", path, exc)
    source = render_source(load_rig(rig_path), count=count, seed=seed, input_size_hw=input_size_hw, progress=progress)
    frames = [source[i] for i in range(len(source))]
    truths = [fs.bev for fs in frames if fs.bev is not None]
    if len(truths) != len(frames):
        raise ValueError("a rendered frame set lacks its true BEV grid")  # render_source attaches one to every set
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(
            f,
            images=np.stack([fs.images for fs in frames]),
            labels=np.stack([fs.labels for fs in frames]),
            bev=np.stack(truths),
            names=np.array([fs.name for fs in frames]),
        )
    tmp.replace(path)
    for stale in path.parent.glob(f"{stem}-*.npz"):  # the same data set, rendered by other code or another rig
        if stale != path:
            stale.unlink(missing_ok=True)
    log.info("wrote %d rendered frame sets to %s", len(frames), path)
    return source


def _read_rendered(path: Path) -> ArraySource:
    with path.open("rb") as f, np.load(f, allow_pickle=False) as stored:  # the file closes even when np.load fails
        images, labels, bev, names = stored["images"], stored["labels"], stored["bev"], stored["names"]
    log.info("read %d rendered frame sets from %s", len(names), path)
    stacks = zip(images, labels, bev, names, strict=True)
    return ArraySource([FrameSet(images=i, labels=lb, bev=b, name=str(n)) for i, lb, b, n in stacks])


_CACHE_FUNCTIONS = (render_source, cached_render, _read_rendered)


def open_source(
    data: str,
    rig_path: str | Path,
    input_size_hw: tuple[int, int],
    *,
    count: int,
    seed: int,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    native_size: bool = False,
) -> FrameSource:
    """``"synth"``: render ``count`` frame sets of data set ``seed`` (through ``cache_dir`` when given);
    otherwise a ``bev synth`` folder (``count`` and ``seed`` unused), decoded on first use and kept, at the input
    size or (``native_size``) at the size it was written at."""
    if native_size and data == SYNTH:
        raise FrameError("frame sets at their own size need a bev synth folder (rendered ones come at the input size)")
    if data == SYNTH and cache_dir:
        return cached_render(rig_path, cache_dir, count=count, seed=seed, input_size_hw=input_size_hw, progress=progress)
    rig = load_rig(rig_path)
    if data == SYNTH:
        return render_source(rig, count=count, seed=seed, input_size_hw=input_size_hw, progress=progress)
    return CachedSource(DirectorySource(data, input_size_hw, rig, resize=not native_size))
