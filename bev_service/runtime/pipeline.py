"""BevPipeline: one frame set of encoded images to an encoded BEV grid, in process, with stage timings.

decode (per camera, threads) -> resize to the camera's network input -> segment (argmax on the backend's
device; one network call per input size) -> one-gather BEV warp on that same device -> copy the grid to
the host -> encode. Each camera runs at ``network_input_size`` of its calibrated size: cameras of any
shape, and cameras of different shapes in one rig, all run.
Torch tensors stay on their device until the final grid: the only bytes handed from the backend to
the host are the grid's (``device_to_host_bytes``; with ONNX Runtime, the uint8 label maps it
returns). Lookup tables are built in the constructor, off the request path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bev_service.errors import FrameError, ModelError
from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Rig
from bev_service.imageio import (
    DEFAULT_MAX_PIXELS,
    check_camera_set,
    check_whole_factor,
    decode_image,
    decode_labels,
    encode_png,
    probe_image,
    probe_labels,
)
from bev_service.runtime.resize import network_input_size, resize_images, resize_labels
from bev_service.runtime.segmenter import Segmenter, is_torch_tensor

log = logging.getLogger(__name__)

STAGES = ("decode", "resize", "segment", "warp", "to_host", "encode")


@dataclass(frozen=True)
class BevResult:
    grid: NDArray[np.uint8]  # (rows, cols) class ids, EGO and UNKNOWN
    encoded: bytes | None
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage and "total"
    device_to_host_bytes: int = 0
    input_sizes_hw: tuple[tuple[int, int], ...] = ()  # per camera, in rig order: the maps' sizes the warp read
    # Per camera, in rig order, the (h, w) class ids the warp read (on the backend's device until asked for)
    camera_labels: tuple[Any, ...] = field(default=(), repr=False)

    def camera_labels_numpy(self) -> tuple[NDArray[np.uint8], ...]:
        """The per-camera label maps on the host (a copy from the device for torch on CUDA)."""
        return tuple(np.asarray(m.cpu().numpy() if is_torch_tensor(m) else m, dtype=np.uint8) for m in self.camera_labels)


@dataclass(frozen=True)
class Decoded:
    """A frame set ready for the network: each camera's (h, w, 3) input at its network size, in rig
    order, and what decoding it took."""

    images: tuple[NDArray[np.uint8], ...]
    timings_ms: dict[str, float]


class BevPipeline:
    """Frames of one rig to its BEV grid through one segmenter."""

    def __init__(
        self,
        rig: Rig,
        segmenter: Segmenter,
        *,
        projector: BevProjector | None = None,
        confidence_fusion: bool = False,
        encoder: Callable[[NDArray[np.uint8]], bytes] | None = encode_png,
        decode_threads: int = 4,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        input_pixels: int | None = None,
    ) -> None:
        self.rig = rig
        self.segmenter = segmenter
        self.projector = projector if projector is not None else BevProjector(rig)
        self.confidence_fusion = confidence_fusion
        self.encoder = encoder
        self.max_pixels = max_pixels
        self.input_sizes_hw = input_sizes(rig, segmenter, input_pixels)
        # Cameras of one size share a network call: camera indices by size, in rig order.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(self.input_sizes_hw):
            groups.setdefault(size, []).append(i)
        self._groups = tuple((size, tuple(cams)) for size, cams in groups.items())
        try:
            self.projector.label_table(self.input_sizes_hw)  # built now, not on the first request
        except ValueError as exc:
            raise ModelError(
                f"the network's input sizes {self.input_sizes_hw} (h, w) do not fit rig {rig.rig_id!r}: {exc}"
            ) from exc
        self._pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="bev-decode")

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def _check_cameras(self, frames: Mapping[str, object]) -> None:
        check_camera_set(frames.keys(), self.rig.camera_names)

    def _decode(self, name: str, frame: bytes | NDArray[np.uint8]) -> NDArray[np.uint8]:
        """One camera's image, decoded; the calibrated size or smaller by a whole factor (the
        network input is a resize either way). Encoded bytes are judged from their header first:
        a few KB of PNG may declare a large image, which is refused before a pixel is decoded."""
        calibrated_hw = self.rig.camera(name).image_size_hw
        if isinstance(frame, bytes | bytearray):
            data, named = bytes(frame), f"camera {name!r}"
            header = probe_image(data, name=named, max_pixels=self.max_pixels)
            check_whole_factor(header.size_hw, calibrated_hw, name=name)
            image = decode_image(data, name=named, header=header)  # its pixels match the header's size
        else:
            image = np.asarray(frame)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise FrameError(f"camera {name!r}: expected an RGB uint8 image, got {image.dtype} with shape {image.shape}")
        check_whole_factor(image.shape[:2], calibrated_hw, name=name)
        return image

    def decode(self, frames: Mapping[str, bytes | NDArray[np.uint8]]) -> Decoded:
        """A frame set to the network's input batch: checks the cameras, decodes (one thread per
        camera) and resizes. FrameError names the first bad camera."""
        clock = _StageClock()
        self._check_cameras(frames)
        names = self.rig.camera_names
        images = list(self._pool.map(lambda n: self._decode(n, frames[n]), names))
        clock.lap("decode")
        sized = self._pool.map(
            lambda pair: resize_images(pair[0][None], pair[1])[0], zip(images, self.input_sizes_hw, strict=True)
        )
        resized = tuple(sized)
        clock.lap("resize")
        return Decoded(images=resized, timings_ms=clock.laps)

    def run(self, frames: Mapping[str, bytes | NDArray[np.uint8]]) -> BevResult:
        """Encoded images (or decoded RGB arrays) by camera name to the BEV grid."""
        return self.run_decoded([self.decode(frames)])[0]

    def _segment(self, decoded: list[Decoded]) -> tuple[list[Any], list[Any]]:
        """Per frame set, its cameras' label maps (and confidence maps) in rig order: one network call per
        input size, over every frame set's cameras of that size. When all cameras share one size the maps
        of a frame set are one (N, h, w) slice of the output, as the warp likes them best."""
        n = len(self.rig.cameras)
        if len(self._groups) == 1:
            seg = self.segmenter.segment(np.stack([im for d in decoded for im in d.images]), confidence=self.confidence_fusion)
            labels = [seg.labels[i * n : (i + 1) * n] for i in range(len(decoded))]
            confidence = [
                seg.confidence[i * n : (i + 1) * n] if seg.confidence is not None else None for i in range(len(decoded))
            ]
            return labels, confidence
        per_labels: list[list[Any]] = [[None] * n for _ in decoded]
        per_confidence: list[list[Any]] = [[None] * n for _ in decoded]
        for _, cameras in self._groups:
            seg = self.segmenter.segment(
                np.stack([d.images[c] for d in decoded for c in cameras]), confidence=self.confidence_fusion
            )
            k = 0
            for i in range(len(decoded)):
                for c in cameras:
                    per_labels[i][c] = seg.labels[k]
                    per_confidence[i][c] = seg.confidence[k] if seg.confidence is not None else None
                    k += 1
        return per_labels, per_confidence if self.confidence_fusion else [None] * len(decoded)

    def run_decoded(self, decoded: list[Decoded]) -> list[BevResult]:
        """Decoded frame sets to their grids: frame sets of one rig batch together (one network call per
        camera input size, over every frame set). Each result's segment time is its share."""
        clock = _StageClock()
        labels_of, confidence_of = self._segment(decoded)
        clock.lap("segment", sync=labels_of[-1][-1])
        out = []
        segment_ms = round(clock.laps["segment"] / len(decoded), 3)
        for i, d in enumerate(decoded):
            shared = {**d.timings_ms, "segment": segment_ms}
            part = _StageClock()
            labels, confidence = labels_of[i], confidence_of[i]
            grid = self.projector.warp_labels(labels, confidence)
            part.lap("warp", sync=grid)
            copied = _handed_over_bytes(labels, confidence, grid)
            if is_torch_tensor(grid):
                grid = grid.cpu().numpy()
            part.lap("to_host")
            encoded = self.encoder(grid) if self.encoder is not None else None
            part.lap("encode")
            timings = {**shared, **part.laps}
            timings["total"] = round(sum(timings.values()), 3)
            out.append(
                BevResult(
                    grid=grid,
                    encoded=encoded,
                    timings_ms=timings,
                    device_to_host_bytes=copied,
                    input_sizes_hw=self.input_sizes_hw,
                    camera_labels=tuple(labels[c] for c in range(len(self.rig.cameras))),
                )
            )
        return out

    def fuse(self, label_maps: Mapping[str, bytes | NDArray[np.uint8]]) -> BevResult:
        """Fusion only: per-camera label maps (class ids; PNG bytes or (h, w) uint8 arrays), the
        calibrated size or smaller by a whole factor, warped and fused into the grid. No network. Maps
        of the calibrated size are warped as they are (the tables of that size are built on first use);
        others are resized to the camera's network size first, so one rig has at most two sets of tables."""
        self._check_cameras(label_maps)
        clock = _StageClock()
        maps: list[NDArray[np.uint8]] = []
        for name in self.rig.camera_names:
            data, calibrated_hw = label_maps[name], self.rig.camera(name).image_size_hw
            if isinstance(data, bytes | bytearray):
                # As for images: the header's size is checked before a pixel is decoded.
                png, named = bytes(data), f"camera {name!r}"
                header = probe_labels(png, name=named, max_pixels=self.max_pixels)
                check_whole_factor(header.size_hw, calibrated_hw, name=name)
                labels = decode_labels(png, name=named, header=header)
            else:
                labels = np.asarray(data)
            if labels.dtype != np.uint8 or labels.ndim != 2:
                raise FrameError(f"camera {name!r}: a label map is (h, w) uint8 class ids, got {labels.dtype} {labels.shape}")
            check_whole_factor(labels.shape, calibrated_hw, name=name)
            maps.append(labels)
        if any(m.shape != cam.image_size_hw for m, cam in zip(maps, self.rig.cameras, strict=True)):
            maps = [resize_labels(m[None], size)[0] for m, size in zip(maps, self.input_sizes_hw, strict=True)]
        clock.lap("decode")
        grid = self.projector.warp_labels(maps)
        clock.lap("warp")
        encoded = self.encoder(grid) if self.encoder is not None else None
        clock.lap("encode")
        sizes = tuple((int(m.shape[0]), int(m.shape[1])) for m in maps)
        return BevResult(
            grid=grid,
            encoded=encoded,
            timings_ms=clock.result(),
            device_to_host_bytes=0,
            input_sizes_hw=sizes,
            camera_labels=tuple(maps),
        )


def input_sizes(rig: Rig, segmenter: Segmenter, input_pixels: int | None = None) -> tuple[tuple[int, int], ...]:
    """Each camera's (h, w) through the network, in rig order: ``network_input_size`` of its calibrated
    size at ``input_pixels`` (default: the pixels of the size the network was trained at)."""
    h, w = segmenter.input_size_hw
    pixels = input_pixels if input_pixels is not None else h * w
    return tuple(network_input_size(cam.image_size_hw, pixels) for cam in rig.cameras)


def _handed_over_bytes(labels: Any, confidence: Any, grid: Any) -> int:
    """Bytes that leave the backend's memory for the host: the grid when the warp ran beside the
    network (torch, any device), else the label maps (and confidence) ONNX Runtime hands back."""
    if is_torch_tensor(grid):
        return grid.numel() * grid.element_size()
    maps = [*(labels if isinstance(labels, list) else [labels]), *(confidence if isinstance(confidence, list) else [confidence])]
    return sum(int(a.nbytes) for a in maps if isinstance(a, np.ndarray))


class _StageClock:
    """Stage laps in milliseconds; CUDA work is waited for so that each lap holds its own stage."""

    def __init__(self) -> None:
        self.began = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, stage: str, sync: object = None) -> None:
        if is_torch_tensor(sync) and sync.device.type == "cuda":  # type: ignore[attr-defined]
            import torch

            torch.cuda.synchronize(sync.device)  # type: ignore[attr-defined]
        now = time.perf_counter()
        self.laps[stage] = round((now - self.last) * 1000.0, 3)
        self.last = now

    def result(self) -> dict[str, float]:
        return {**self.laps, "total": round((self.last - self.began) * 1000.0, 3)}


def segment_image(segmenter: Segmenter, image: NDArray[np.uint8], input_pixels: int | None = None) -> NDArray[np.uint8]:
    """One (h, w, 3) RGB image of any size through the network at ``network_input_size`` of its own
    size, to (h, w) class ids at that same size (scaled back nearest-neighbour): what the network sees
    of a camera before any rig is involved."""
    h, w = segmenter.input_size_hw
    size = network_input_size(image.shape[:2], input_pixels if input_pixels is not None else h * w)
    labels = segmenter.segment(resize_images(image[None], size)).labels_numpy()
    return resize_labels(labels, image.shape[:2])[0]
