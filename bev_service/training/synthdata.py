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
import re
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


DEFAULT_RIGS = "default"
RIG_KINDS = ("default", "surround", "front_pinhole")  # the shipped rig, random surround rigs, random dashboard cameras
RANDOM_RIG_PIXELS = 480 * 320  # what a random rig's cameras render at (the shipped network's training pixels)
PER_WORLD_MIXED = 4  # frame sets per world when the rigs are mixed: a new rig (and world) every four


def parse_rig_mix(text: str) -> dict[str, float]:
    """``"default:0.5,surround:0.35,front_pinhole:0.15"`` (or ``"default"``) to shares that sum to 1."""
    shares: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, share = item.partition(":")
        if name not in RIG_KINDS:
            raise ValueError(f"unknown rig kind {name!r} in {text!r}; the kinds are {list(RIG_KINDS)}")
        try:
            shares[name] = float(share) if share else 1.0
        except ValueError:
            raise ValueError(f"rig share {share!r} of {name!r} is not a number") from None
        if shares[name] < 0:
            raise ValueError(f"rig share of {name!r} must be >= 0, got {shares[name]}")
    total = sum(shares.values())
    if total <= 0:
        raise ValueError(f"rig mix {text!r} has no positive share")
    return {k: v / total for k, v in shares.items()}


def world_rig(rig: Rig, mix: dict[str, float], seed: int, world_index: int) -> tuple[Rig, str]:
    """The rig that renders world ``world_index`` of data set ``seed``: the given one or a random one, by ``mix``."""
    from bev_service.synth.random_rig import random_rig

    rng = np.random.default_rng(np.random.SeedSequence([seed, world_index, 23]))
    kinds = list(mix)
    kind = kinds[int(rng.choice(len(kinds), p=[mix[k] for k in kinds]))]
    if kind == "default":
        return rig, kind
    return random_rig(rng, pixels=RANDOM_RIG_PIXELS, cameras=kind), kind


def render_source(
    rig: Rig, *, count: int, seed: int, input_size_hw: tuple[int, int], rigs: str = DEFAULT_RIGS, progress: bool = False
) -> ArraySource:
    """``count`` frame sets of the synthetic worlds of ``seed``, rendered now (data set ``seed`` of ``bev synth``).

    ``rigs`` other than ``"default"`` mixes in random rigs (``parse_rig_mix``), one per world of four frame sets:
    their cameras render at their own sizes (about the network's training pixels, aspect ratios of real cameras),
    so frame sets of such a source differ in size and camera count. ``rig``'s frame sets come at ``input_size_hw``.
    """
    from bev_service.synth import iter_frame_sets
    from bev_service.synth.dataset import FRAME_SETS_PER_WORLD

    mix = parse_rig_mix(rigs)
    frames: list[FrameSet] = []
    bar = tqdm(total=count, desc=f"render seed {seed}", unit="frame set", disable=not progress)
    if mix == {"default": 1.0}:
        chunks = [(rig, "default", 0, count, FRAME_SETS_PER_WORLD)]
    else:
        chunks = [(*world_rig(rig, mix, seed, w), w * PER_WORLD_MIXED, min(count, (w + 1) * PER_WORLD_MIXED), PER_WORLD_MIXED)
                  for w in range(-(-count // PER_WORLD_MIXED))]  # fmt: skip
    for chunk_rig, kind, start, stop, per_world in chunks:
        scale = input_size_hw[0] / chunk_rig.cameras[0].image_size_hw[0] if kind == "default" else 1.0
        rendered = iter_frame_sets(chunk_rig, count=stop, seed=seed, scale=scale, per_world=per_world, start=start)
        for index, world_seed, fs in rendered:
            images = np.stack([fs.images[name] for name in fs.camera_names])
            name = f"seed{seed}-{index:06d}-world{world_seed}-{kind}"
            frame = FrameSet(images=images, labels=fs.label_stack(), bev=fs.bev_truth, name=name, body=fs.body_stack())
            frames.append(resized(frame, input_size_hw) if kind == "default" else frame)
            bar.update(1)
    bar.close()
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
            body=None if stored.body is None else np.stack([stored.body[name] for name in self.cameras]),
        )
        return resized(frame, self.input_size_hw) if self.resize else frame


def render_digest(
    rig_path: str | Path, *, count: int, seed: int, input_size_hw: tuple[int, int], rigs: str = DEFAULT_RIGS
) -> str:
    """A digest of everything ``render_source``'s pixels depend on (see the module's docstring)."""
    settings = {"count": count, "seed": seed, "input_size_hw": list(input_size_hw)}
    if rigs != DEFAULT_RIGS:
        settings["rigs"] = rigs
    h = hashlib.sha256(json.dumps(settings).encode())
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
    rigs: str = DEFAULT_RIGS,
    progress: bool = False,
) -> ArraySource:
    """``render_source``, read from ``cache_dir`` when an earlier call rendered the same data set, else
    rendered and written there (atomically: a reader never sees half a file)."""
    digest = render_digest(rig_path, count=count, seed=seed, input_size_hw=input_size_hw, rigs=rigs)
    mixed = "" if rigs == DEFAULT_RIGS else "-mixed"
    stem = f"render-seed{seed}-n{count}-{input_size_hw[1]}x{input_size_hw[0]}{mixed}"
    path = Path(cache_dir) / f"{stem}-{digest}.npz"
    if path.is_file():
        try:
            return _read_rendered(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("%s is unreadable (%s); rendering again", path, exc)
    source = render_source(load_rig(rig_path), count=count, seed=seed, input_size_hw=input_size_hw, rigs=rigs, progress=progress)
    frames = [source[i] for i in range(len(source))]
    arrays: dict[str, np.ndarray] = {"names": np.array([fs.name for fs in frames])}
    for i, fs in enumerate(frames):  # one entry per frame set: mixed rigs differ in sizes and camera counts
        if fs.bev is None:
            raise ValueError("a rendered frame set lacks its true BEV grid")  # render_source attaches one to every set
        arrays[f"images_{i}"], arrays[f"labels_{i}"], arrays[f"bev_{i}"] = fs.images, fs.labels, fs.bev
        if fs.body is not None:
            arrays[f"body_{i}"] = fs.body
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, allow_pickle=False, **arrays)
    tmp.replace(path)
    own = re.compile(rf"{re.escape(stem)}-[0-9a-f]{{20}}\.npz")  # not the mixed-rig set of the same seed and count
    for stale in path.parent.glob(f"{stem}-*.npz"):  # the same data set, rendered by other code or another rig file
        if stale != path and own.fullmatch(stale.name):
            stale.unlink(missing_ok=True)
    log.info("wrote %d rendered frame sets to %s", len(frames), path)
    return source


def _read_rendered(path: Path) -> ArraySource:
    with path.open("rb") as f, np.load(f, allow_pickle=False) as stored:  # the file closes even when np.load fails
        names = stored["names"]
        frames = [
            FrameSet(
                images=stored[f"images_{i}"],
                labels=stored[f"labels_{i}"],
                bev=stored[f"bev_{i}"],
                name=str(n),
                body=stored.get(f"body_{i}"),
            )
            for i, n in enumerate(names)
        ]
    log.info("read %d rendered frame sets from %s", len(names), path)
    return ArraySource(frames)


_CACHE_FUNCTIONS = (parse_rig_mix, world_rig, render_source, cached_render, _read_rendered)


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
    rigs: str = DEFAULT_RIGS,
) -> FrameSource:
    """``"synth"``: render ``count`` frame sets of data set ``seed`` (through ``cache_dir`` when given);
    otherwise a ``bev synth`` folder (``count`` and ``seed`` unused), decoded on first use and kept, at the input
    size or (``native_size``) at the size it was written at."""
    if native_size and data == SYNTH:
        raise FrameError("frame sets at their own size need a bev synth folder (rendered ones come at the input size)")
    if data == SYNTH and cache_dir:
        return cached_render(
            rig_path, cache_dir, count=count, seed=seed, input_size_hw=input_size_hw, rigs=rigs, progress=progress
        )
    rig = load_rig(rig_path)
    if data == SYNTH:
        return render_source(rig, count=count, seed=seed, input_size_hw=input_size_hw, rigs=rigs, progress=progress)
    return CachedSource(DirectorySource(data, input_size_hw, rig, resize=not native_size))
