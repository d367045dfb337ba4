"""Frame sources from the synthetic world: rendered on the fly, or read from a ``bev synth`` folder.

Both give ``FrameSet``s at the network's input size (images area-averaged, labels nearest) with the
true BEV grid attached. Rendering happens once, up front, at the scale that gives the input size
directly (the default rig's 960x640 at scale 0.5 is 480x320); folders are decoded on first use and
kept in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bev_service.calib.rigfile import load_rig
from bev_service.errors import FrameError
from bev_service.geometry.rig import Rig
from bev_service.model.data import ArraySource, CachedSource, FrameSet, FrameSource, resized

log = logging.getLogger(__name__)

SYNTH = "synth"


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
    """The frame sets of a ``bev synth`` folder, in manifest order, resized to the input size."""

    def __init__(self, folder: str | Path, input_size_hw: tuple[int, int], rig: Rig | None = None) -> None:
        from bev_service.synth import read_manifest

        self.folder = Path(folder)
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
        return resized(frame, self.input_size_hw)


def open_source(
    data: str, rig_path: str | Path, input_size_hw: tuple[int, int], *, count: int, seed: int, progress: bool = False
) -> FrameSource:
    """``"synth"``: render ``count`` frame sets of data set ``seed``; otherwise a ``bev synth`` folder
    (``count`` and ``seed`` unused), decoded on first use and kept."""
    rig = load_rig(rig_path)
    if data == SYNTH:
        return render_source(rig, count=count, seed=seed, input_size_hw=input_size_hw, progress=progress)
    return CachedSource(DirectorySource(data, input_size_hw, rig))
