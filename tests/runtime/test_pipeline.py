"""BevPipeline on the default rig with a tiny untrained network: shapes, fixed cells, timings, the
bytes handed back, agreement with the pieces run by hand, and clear errors for bad frame sets."""

from __future__ import annotations

import io
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from bev_service.errors import FrameError
from bev_service.geometry.grid import EGO, UNKNOWN
from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Rig
from bev_service.imageio import decode_labels
from bev_service.runtime.onnx_backend import OnnxSegmenter
from bev_service.runtime.pipeline import STAGES, BevPipeline
from bev_service.runtime.resize import resize_images, resize_labels
from bev_service.runtime.torch_backend import TorchSegmenter
from tests.networks import TINY, tiny_model

MIB = 1 << 20


def jpeg_frames(rig: Rig, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    frames = {}
    for cam in rig.cameras:
        h, w = cam.image_size_hw
        image = cv2.resize(rng.integers(0, 256, size=(h // 16, w // 16, 3), dtype=np.uint8), (w, h))
        frames[cam.name] = cv2.imencode(".jpg", image)[1].tobytes()
    return frames


def flat_png(width: int, height: int) -> bytes:
    """A whole, valid grey PNG of one level: about 70 KB for 4096x4096, 16 M pixels (48 MB as RGB)."""
    out = io.BytesIO()
    Image.new("L", (width, height), 90).save(out, "PNG", compress_level=1)
    return out.getvalue()


@pytest.fixture(scope="module")
def large_png() -> bytes:
    """Within the default pixel limit (4096 x 4096) but four times the default rig's 960x640."""
    return flat_png(4096, 4096)


def refused_cheaply(call: Callable[[], Any], match: str) -> tuple[float, int]:
    """Seconds and peak traced bytes until ``call`` raises a FrameError matching ``match``."""
    tracemalloc.start()
    began = time.perf_counter()
    try:
        with pytest.raises(FrameError, match=match):
            call()
        return time.perf_counter() - began, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_frames_to_grid_match_the_stages_run_by_hand(rig: Rig, projector: BevProjector) -> None:
    segmenter = TorchSegmenter(tiny_model(), TINY, device="cpu")
    pipeline = BevPipeline(rig, segmenter, projector=projector)
    frames = jpeg_frames(rig)
    result = pipeline.run(frames)
    pipeline.close()
    assert result.grid.shape == rig.grid.shape == (400, 400) and result.grid.dtype == np.uint8
    fixed = projector.label_table(TINY.input_size_hw).fixed.reshape(rig.grid.shape)
    assert set(np.unique(result.grid[fixed])) <= {EGO, UNKNOWN} and (result.grid[~fixed] < 8).all()
    decoded = np.stack([cv2.imdecode(np.frombuffer(frames[n], np.uint8), cv2.IMREAD_COLOR)[..., ::-1] for n in rig.camera_names])
    by_hand = projector.warp_labels(segmenter.segment(resize_images(decoded, TINY.input_size_hw)).labels).numpy()
    np.testing.assert_array_equal(result.grid, by_hand)
    assert set(result.timings_ms) == {*STAGES, "total"} and all(v >= 0 for v in result.timings_ms.values())
    assert result.device_to_host_bytes == result.grid.nbytes == 400 * 400
    assert result.encoded is not None
    np.testing.assert_array_equal(decode_labels(result.encoded), result.grid)


def test_onnx_runtime_pipeline_hands_back_the_label_maps(rig: Rig, projector: BevProjector, tiny_onnx: Path) -> None:
    frames = jpeg_frames(rig, seed=1)
    torch_grid = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector).run(frames).grid
    result = BevPipeline(rig, OnnxSegmenter(tiny_onnx), projector=projector, encoder=None).run(frames)
    np.testing.assert_array_equal(result.grid, torch_grid)
    assert result.device_to_host_bytes == 4 * 64 * 96 and result.encoded is None


def test_confidence_fusion_gives_a_grid(rig: Rig, projector: BevProjector) -> None:
    pipeline = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector, confidence_fusion=True)
    grid = pipeline.run(jpeg_frames(rig)).grid
    assert grid.shape == (400, 400) and (grid[grid < 254] < 8).all()


def test_decoded_arrays_are_accepted(rig: Rig, projector: BevProjector) -> None:
    frames = {cam.name: np.zeros((*cam.image_size_hw, 3), dtype=np.uint8) for cam in rig.cameras}
    grid = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector).run(frames).grid
    assert grid.shape == (400, 400)


def test_bad_frame_sets_are_frame_errors(rig: Rig, projector: BevProjector) -> None:
    pipeline = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector)
    frames = jpeg_frames(rig)
    with pytest.raises(FrameError, match="missing 'rear'"):
        pipeline.run({k: v for k, v in frames.items() if k != "rear"})
    with pytest.raises(FrameError, match="unknown 'roof'"):
        pipeline.run({**frames, "roof": frames["front"]})
    with pytest.raises(FrameError, match="cannot decode"):
        pipeline.run({**frames, "left": b"not a jpeg"})
    odd = cv2.imencode(".jpg", np.zeros((320, 400, 3), np.uint8))[1].tobytes()
    with pytest.raises(FrameError, match=r"front: got a 400x320 .* calibrated at 960x640"):
        pipeline.run({**frames, "front": odd})
    truncated = frames["rear"][: len(frames["rear"]) // 2]
    with pytest.raises(FrameError, match="camera 'rear': cannot decode image: truncated JPEG"):
        pipeline.run({**frames, "rear": truncated})


def test_an_image_larger_than_calibrated_is_refused_from_its_header(rig: Rig, projector: BevProjector, large_png: bytes) -> None:
    """Its header is enough: the 48 MB of pixels are never decoded."""
    pipeline = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector)
    frames = jpeg_frames(rig)
    pipeline.decode(frames)  # the decode threads are started
    elapsed, peak = refused_cheaply(lambda: pipeline.decode({**frames, "front": large_png}), r"front: got a 4096x4096 .* 960x640")
    pipeline.close()
    assert elapsed < 0.1 and peak < 20 * MIB, (elapsed, peak)


def test_a_label_map_larger_than_calibrated_is_refused_from_its_header(
    rig: Rig, projector: BevProjector, large_png: bytes
) -> None:
    pipeline = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector)
    maps = {cam.name: cv2.imencode(".png", np.zeros((320, 480), np.uint8))[1].tobytes() for cam in rig.cameras}
    elapsed, peak = refused_cheaply(lambda: pipeline.fuse({**maps, "front": large_png}), r"front: got a 4096x4096 .* 960x640")
    assert elapsed < 0.1 and peak < 4 * MIB, (elapsed, peak)  # the 16 MB of class ids are never decoded


@pytest.mark.parametrize(("fmt", "named"), [("GIF", "GIF"), ("WEBP", "WebP"), ("TIFF", "TIFF"), ("BMP", "BMP")])
def test_formats_other_than_png_and_jpeg_are_refused_naming_the_camera(
    rig: Rig, projector: BevProjector, fmt: str, named: str
) -> None:
    pipeline = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector)
    out = io.BytesIO()
    Image.new("RGB", (960, 640), (40, 90, 160)).save(out, fmt)
    with pytest.raises(FrameError, match=rf"^camera 'left': a {named} image; send PNG or JPEG$"):
        pipeline.run({**jpeg_frames(rig), "left": out.getvalue()})
    labels = io.BytesIO()
    Image.new("L", (480, 320), 3).save(labels, fmt)
    maps = {cam.name: cv2.imencode(".png", np.zeros((320, 480), np.uint8))[1].tobytes() for cam in rig.cameras}
    with pytest.raises(FrameError, match=rf"^camera 'left': a {named} label map; send PNG$"):
        pipeline.fuse({**maps, "left": labels.getvalue()})


def test_images_smaller_by_a_whole_factor_are_accepted(rig: Rig, projector: BevProjector) -> None:
    pipeline = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector)
    frames = jpeg_frames(rig, seed=2)

    def shrunk(data: bytes, factor: int) -> bytes:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return cv2.imencode(".png", cv2.resize(image, (960 // factor, 640 // factor), interpolation=cv2.INTER_AREA))[1].tobytes()

    full = pipeline.run(frames).grid
    for factor in (2, 4):
        grid = pipeline.run({k: shrunk(v, factor) for k, v in frames.items()}).grid
        assert np.mean(grid == full) > 0.9  # the same scene through the same 96x64 input; only resampling differs


def test_batched_frame_sets_equal_one_at_a_time(rig: Rig, projector: BevProjector) -> None:
    pipeline = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector)
    sets = [jpeg_frames(rig, seed=s) for s in (3, 4)]
    batched = pipeline.run_decoded([pipeline.decode(f) for f in sets])
    for frames, result in zip(sets, batched, strict=True):
        np.testing.assert_array_equal(result.grid, pipeline.run(frames).grid)
        assert set(result.timings_ms) == {*STAGES, "total"}


def test_fusion_only_warps_the_given_label_maps(rig: Rig, projector: BevProjector) -> None:
    pipeline = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector)
    rng = np.random.default_rng(5)
    maps = {cam.name: rng.integers(0, 8, size=(320, 480), dtype=np.uint8) for cam in rig.cameras}
    pngs = {k: cv2.imencode(".png", v)[1].tobytes() for k, v in maps.items()}
    result = pipeline.fuse(pngs)
    by_hand = projector.warp_labels(np.stack([resize_labels(maps[n][None], TINY.input_size_hw)[0] for n in rig.camera_names]))
    np.testing.assert_array_equal(result.grid, by_hand)
    with pytest.raises(FrameError, match="single-channel"):
        pipeline.fuse({**pngs, "front": cv2.imencode(".png", np.zeros((320, 480, 3), np.uint8))[1].tobytes()})


def test_a_network_trained_on_square_frames_runs_on_a_three_by_two_rig(rig: Rig, projector: BevProjector) -> None:
    """Each camera runs at its own aspect ratio with about the network's training pixels: 64x64 becomes 72x48."""
    square = replace(TINY, input_size_hw=(64, 64))
    pipeline = BevPipeline(rig, TorchSegmenter(tiny_model(), square, device="cpu"), projector=projector)
    assert pipeline.input_sizes_hw == ((48, 72),) * 4
    assert pipeline.run(jpeg_frames(rig)).grid.shape == rig.grid.shape
    pipeline.close()


def cropped(rig: Rig, names: tuple[str, ...], width: int) -> Rig:
    """The rig with the cameras ``names`` cropped to ``width`` columns about their centre: the same
    geometry seen by a sensor of another aspect ratio (its principal point moves with the crop)."""
    cameras = []
    for cam in rig.cameras:
        if cam.name in names:
            h, w = cam.model.image_size_hw
            k = cam.model.intrinsics
            model = replace(cam.model, intrinsics=replace(k, cx=k.cx - (w - width) / 2), image_size_hw=(h, width))
            cam = replace(cam, model=model)
        cameras.append(cam)
    return replace(rig, rig_id="cropped", cameras=tuple(cameras))


@pytest.fixture(scope="module")
def mixed_rig(rig: Rig) -> Rig:
    return cropped(rig, ("left", "right"), 800)  # 960x640 front and rear, 800x640 sides


def test_cameras_of_two_shapes_run_one_network_call_per_shape(mixed_rig: Rig) -> None:
    """Front and rear at 480x320, the 800x640 sides at about as many pixels in their own shape; the
    grid is the warp of each camera's labels at its own size, and two frame sets batch per shape."""
    segmenter = TorchSegmenter(tiny_model(), TINY, device="cpu")
    pipeline = BevPipeline(mixed_rig, segmenter)
    front, side = pipeline.input_sizes_hw[0], pipeline.input_sizes_hw[1]
    assert front == TINY.input_size_hw and side != front and pipeline.input_sizes_hw == (front, side, front, side)
    assert abs(side[1] / side[0] - 800 / 640) < 0.05
    frames = [jpeg_frames(mixed_rig, seed) for seed in (0, 1)]
    calls: list[tuple[int, ...]] = []
    segment = segmenter.segment
    segmenter.segment = lambda batch, **kw: (calls.append(tuple(batch.shape)), segment(batch, **kw))[1]  # type: ignore[method-assign]
    results = pipeline.run_decoded([pipeline.decode(f) for f in frames])
    assert sorted(calls) == sorted([(4, *front, 3), (4, *side, 3)]), "one call per shape, both frame sets in it"
    for result, frame_set in zip(results, frames, strict=True):
        labels = []
        for cam, size in zip(mixed_rig.cameras, pipeline.input_sizes_hw, strict=True):
            image = cv2.imdecode(np.frombuffer(frame_set[cam.name], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            labels.append(segment(resize_images(np.ascontiguousarray(image)[None], size)).labels_numpy()[0])
        by_hand = pipeline.projector.warp_labels(labels)
        assert (result.grid == by_hand).mean() > 0.999  # batch composition may move a float by an ulp
        np.testing.assert_array_equal(result.grid >= EGO, by_hand >= EGO)
    pipeline.close()


def test_fusion_at_the_calibrated_size_warps_the_maps_as_they_are(mixed_rig: Rig) -> None:
    """Label maps of each camera's calibrated size are not resized (the grid is their warp at that size);
    maps smaller by a whole factor go through the network sizes."""
    pipeline = BevPipeline(mixed_rig, TorchSegmenter(tiny_model(), TINY, device="cpu"))
    rng = np.random.default_rng(5)
    full = {c.name: rng.integers(0, 8, size=c.image_size_hw, dtype=np.uint8) for c in mixed_rig.cameras}
    grid = pipeline.fuse(full).grid
    np.testing.assert_array_equal(grid, pipeline.projector.warp_labels([full[c] for c in mixed_rig.camera_names]))
    half = {name: m[::2, ::2] for name, m in full.items()}
    sized = [
        resize_labels(half[c.name][None], size)[0] for c, size in zip(mixed_rig.cameras, pipeline.input_sizes_hw, strict=True)
    ]
    np.testing.assert_array_equal(pipeline.fuse(half).grid, pipeline.projector.warp_labels(sized))
    pipeline.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_pipeline_copies_only_the_grid(rig: Rig, projector: BevProjector) -> None:
    frames = jpeg_frames(rig)
    cpu = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cpu"), projector=projector).run(frames)
    gpu = BevPipeline(rig, TorchSegmenter(tiny_model(), TINY, device="cuda"), projector=projector).run(frames)
    assert gpu.device_to_host_bytes == gpu.grid.nbytes
    assert (gpu.grid != cpu.grid).mean() < 1e-3


@pytest.mark.parametrize("count", [1, 12])
def test_rigs_of_one_to_twelve_cameras_run(rig: Rig, count: int) -> None:
    """One camera, or twelve (the default rig's four, three times over, on a coarse grid)."""
    cameras = tuple(replace(rig.cameras[i % 4], name=f"cam{i}") for i in range(count))
    coarse = replace(rig, rig_id=f"rig{count}", cameras=cameras, grid=replace(rig.grid, cell_size_m=0.2))
    pipeline = BevPipeline(coarse, TorchSegmenter(tiny_model(), TINY, device="cpu"))
    frames = jpeg_frames(coarse)
    result = pipeline.run(frames)
    assert result.grid.shape == (100, 100) and len(result.camera_labels) == count
    assert len(pipeline.input_sizes_hw) == count
    pipeline.close()
