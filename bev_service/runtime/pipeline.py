"""BevPipeline: one frame set of encoded images to an encoded BEV grid, in process, with stage timings.

decode (per camera, threads) -> resize to the network input -> segment (argmax on the backend's
device) -> one-gather BEV warp on that same device -> copy the grid to the host -> encode.
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
from bev_service.runtime.resize import resize_images, resize_labels
from bev_service.runtime.segmenter import Segmenter, is_torch_tensor

log = logging.getLogger(__name__)

STAGES = ("decode", "resize", "segment", "warp", "to_host", "encode")


@dataclass(frozen=True)
class BevResult:
    grid: NDArray[np.uint8]  # (rows, cols) class ids, EGO and UNKNOWN
    encoded: bytes | None
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage and "total"
    device_to_host_bytes: int = 0


@dataclass(frozen=True)
class Decoded:
    """A frame set ready for the network: the (N, H, W, 3) input batch in rig order and what decoding it took."""

    batch: NDArray[np.uint8]
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
    ) -> None:
        self.rig = rig
        self.segmenter = segmenter
        self.projector = projector if projector is not None else BevProjector(rig)
        self.confidence_fusion = confidence_fusion
        self.encoder = encoder
        self.input_size_hw = segmenter.input_size_hw
        self.max_pixels = max_pixels
        try:
            self.projector.label_table(self.input_size_hw)  # built now, not on the first request
        except ValueError as exc:
            raise ModelError(f"model input {self.input_size_hw} (h, w) does not fit rig {rig.rig_id!r}: {exc}") from exc
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
        batch = np.stack(list(self._pool.map(lambda im: resize_images(im[None], self.input_size_hw)[0], images)))
        clock.lap("resize")
        return Decoded(batch=batch, timings_ms=clock.laps)

    def run(self, frames: Mapping[str, bytes | NDArray[np.uint8]]) -> BevResult:
        """Encoded images (or decoded RGB arrays) by camera name to the BEV grid."""
        return self.run_decoded([self.decode(frames)])[0]

    def run_decoded(self, decoded: list[Decoded]) -> list[BevResult]:
        """Decoded frame sets to their grids through one network call: frame sets of one rig batch
        together (N cameras times len(decoded) images). Each result's segment time is its share."""
        clock = _StageClock()
        n = len(self.rig.cameras)
        seg = self.segmenter.segment(np.concatenate([d.batch for d in decoded]), confidence=self.confidence_fusion)
        clock.lap("segment", sync=seg.labels)
        out = []
        segment_ms = round(clock.laps["segment"] / len(decoded), 3)
        for i, d in enumerate(decoded):
            shared = {**d.timings_ms, "segment": segment_ms}
            part = _StageClock()
            labels = seg.labels[i * n : (i + 1) * n]
            confidence = seg.confidence[i * n : (i + 1) * n] if seg.confidence is not None else None
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
            out.append(BevResult(grid=grid, encoded=encoded, timings_ms=timings, device_to_host_bytes=copied))
        return out

    def fuse(self, label_maps: Mapping[str, bytes | NDArray[np.uint8]]) -> BevResult:
        """Fusion only: per-camera label maps (class ids; PNG bytes or (h, w) uint8 arrays), the
        calibrated size or smaller by a whole factor, warped and fused into the grid. No network."""
        self._check_cameras(label_maps)
        clock = _StageClock()
        maps = []
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
            maps.append(resize_labels(labels[None], self.input_size_hw)[0])
        clock.lap("decode")
        grid = self.projector.warp_labels(np.stack(maps))
        clock.lap("warp")
        encoded = self.encoder(grid) if self.encoder is not None else None
        clock.lap("encode")
        return BevResult(grid=grid, encoded=encoded, timings_ms=clock.result(), device_to_host_bytes=0)


def _handed_over_bytes(labels: Any, confidence: Any, grid: Any) -> int:
    """Bytes that leave the backend's memory for the host: the grid when the warp ran beside the
    network (torch, any device), else the label maps (and confidence) ONNX Runtime hands back."""
    if is_torch_tensor(grid):
        return grid.numel() * grid.element_size()
    return sum(int(a.nbytes) for a in (labels, confidence) if isinstance(a, np.ndarray))


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
