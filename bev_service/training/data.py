"""Frame sets for training and evaluation: per-camera images, pixel labels and (optionally) the true BEV.

A source is anything with ``len`` and indexing that yields ``FrameSet``s at the network's input size.
``ArraySource`` holds arrays in memory; ``render_source`` renders the synthetic world up front and
``DirectorySource`` reads what ``bev synth`` wrote (both in ``bev_service.training.synthdata``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from bev_service.runtime.resize import resize_images, resize_labels

IGNORE = 255  # the label of pixels that neither the loss nor the scores count


@dataclass(frozen=True)
class FrameSet:
    """One synchronised frame set in the rig's camera order."""

    images: NDArray[np.uint8]  # (N, H, W, 3) RGB at the network input size
    labels: NDArray[np.uint8]  # (N, H, W) class ids (IGNORE: unlabelled, ignored)
    bev: NDArray[np.uint8] | None = None  # (rows, cols) true BEV grid, when the source knows it
    name: str = ""
    body: NDArray[np.bool_] | None = None  # (N, H, W) pixels of the vehicle's own body, when the source knows them

    def __post_init__(self) -> None:
        n, h, w = self.labels.shape
        if self.images.shape != (n, h, w, 3) or self.images.dtype != np.uint8 or self.labels.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, 3) matching labels uint8 (N, H, W); got images {self.images.dtype} "
                f"{self.images.shape} and labels {self.labels.dtype} {self.labels.shape}"
            )
        if self.body is not None and (self.body.shape != (n, h, w) or self.body.dtype != np.bool_):
            raise ValueError(f"body mask must be bool {(n, h, w)}, got {self.body.dtype} {self.body.shape}")


class FrameSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> FrameSet: ...


class ArraySource:
    """Frame sets held in memory."""

    def __init__(self, frame_sets: Sequence[FrameSet]) -> None:
        if not frame_sets:
            raise ValueError("a frame source needs at least one frame set")
        self._frames = list(frame_sets)

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> FrameSet:
        return self._frames[index]


class CachedSource:
    """Keeps every frame set of a slow source (rendering, decoding) once it has been read."""

    def __init__(self, source: FrameSource) -> None:
        self._source = source
        self._cache: dict[int, FrameSet] = {}

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> FrameSet:
        if index not in self._cache:
            self._cache[index] = self._source[index]
        return self._cache[index]


class BodyLabelled:
    """The frame sets of ``source`` with the vehicle's own body labelled ``value``: IGNORE leaves it out of the
    loss and the scores (``--body ignore``), a class id teaches it as that class (``--body vehicle``); built on
    access, one ``np.where`` per frame set."""

    def __init__(self, source: FrameSource, value: int = IGNORE) -> None:
        if len(source) and source[0].body is None:
            raise ValueError("relabelling the vehicle's body needs frame sets that know it (rendered ones: --data synth)")
        self._source = source
        self._value = np.uint8(value)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> FrameSet:
        frame_set = self._source[index]
        if frame_set.body is None:
            raise ValueError(f"frame set {frame_set.name!r} has no body mask")
        return replace(frame_set, labels=np.where(frame_set.body, self._value, frame_set.labels))


def resized(frame_set: FrameSet, size_hw: tuple[int, int]) -> FrameSet:
    return FrameSet(
        images=resize_images(frame_set.images, size_hw),
        labels=resize_labels(frame_set.labels, size_hw),
        bev=frame_set.bev,
        name=frame_set.name,
        body=None if frame_set.body is None else resize_labels(frame_set.body.view(np.uint8), size_hw).view(np.bool_),
    )
