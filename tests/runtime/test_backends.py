"""Segmenters: uint8 label maps of the input's size, the same argmax on PyTorch and ONNX Runtime,
confidence equal to the softmax maximum, and clear errors for bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bev_service.errors import FrameError, ModelError
from bev_service.runtime.onnx_backend import OnnxSegmenter
from bev_service.runtime.segmenter import load_segmenter
from bev_service.runtime.torch_backend import TorchSegmenter
from tests.networks import TINY, TINY_SIZE_HW, random_images, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def softmax_max(images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = tiny_model()(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    return logits.softmax(dim=1).amax(dim=1).numpy()


@pytest.mark.parametrize("size_hw", [TINY_SIZE_HW, (24, 40)])
@pytest.mark.parametrize("batch", [1, 4])
def test_torch_labels_are_uint8_of_the_input_size(size_hw: tuple[int, int], batch: int) -> None:
    images = random_images(batch, size_hw)
    before = images.copy()
    out = TorchSegmenter(tiny_model(), TINY, device="cpu").segment(images)
    assert isinstance(out.labels, torch.Tensor) and out.labels.dtype == torch.uint8
    assert tuple(out.labels.shape) == (batch, *size_hw)
    assert int(out.labels.max()) < TINY.num_classes
    assert out.confidence is None
    np.testing.assert_array_equal(images, before)


def test_float_input_gives_the_labels_of_the_uint8_input() -> None:
    images = random_images(2)
    seg = TorchSegmenter(tiny_model(), TINY, device="cpu")
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    np.testing.assert_array_equal(seg.segment(images).labels_numpy(), seg.segment(as_float).labels_numpy())


def test_torch_confidence_is_the_softmax_maximum() -> None:
    images = random_images(2)
    out = TorchSegmenter(tiny_model(), TINY, device="cpu").segment(images, confidence=True)
    conf = out.confidence_numpy()
    assert conf is not None and conf.dtype == np.float32 and conf.shape == (2, *TINY_SIZE_HW)
    assert conf.min() >= 1.0 / TINY.num_classes - 1e-6 and conf.max() <= 1.0
    np.testing.assert_allclose(conf, softmax_max(images), rtol=1e-5, atol=1e-6)


def test_onnx_runtime_labels_equal_torch_labels(tiny_onnx: Path) -> None:
    images = random_images(3, seed=5)
    expected = TorchSegmenter(tiny_model(), TINY, device="cpu").segment(images).labels_numpy()
    got = OnnxSegmenter(tiny_onnx).segment(images)
    assert isinstance(got.labels, np.ndarray) and got.labels.dtype == np.uint8 and got.labels.shape == (3, *TINY_SIZE_HW)
    np.testing.assert_array_equal(got.labels, expected)


def test_onnx_graph_ends_in_argmax_and_a_cast_to_uint8(tiny_onnx: Path) -> None:
    import onnx

    graph = onnx.load(str(tiny_onnx)).graph
    ops = [node.op_type for node in graph.node]
    assert "ArgMax" in ops
    labels_producer = next(node for node in graph.node if "labels" in node.output)
    assert labels_producer.op_type == "Cast"
    assert [o.name for o in graph.output] == ["labels", "confidence"]


def test_onnx_runtime_worker_threads_sleep_between_runs_unless_asked_to_spin(tiny_onnx: Path) -> None:
    key = "session.intra_op.allow_spinning"
    quiet, spinning = OnnxSegmenter(tiny_onnx), OnnxSegmenter(tiny_onnx, spin=True)
    assert quiet._session.get_session_options().get_session_config_entry(key) == "0"
    assert spinning._session.get_session_options().get_session_config_entry(key) == "1"
    images = random_images(2)
    assert np.array_equal(quiet.segment(images).labels, spinning.segment(images).labels)


def test_onnx_runtime_takes_other_sizes_and_batches(tiny_onnx: Path) -> None:
    images = random_images(1, (32, 48), seed=2)
    expected = TorchSegmenter(tiny_model(), TINY, device="cpu").segment(images).labels_numpy()
    np.testing.assert_array_equal(OnnxSegmenter(tiny_onnx).segment(images).labels, expected)


def test_onnx_confidence_matches_the_softmax_maximum(tiny_onnx: Path) -> None:
    images = random_images(2, seed=3)
    out = OnnxSegmenter(tiny_onnx).segment(images, confidence=True)
    assert out.confidence is not None and out.confidence.min() >= 0.0 and out.confidence.max() <= 1.0
    np.testing.assert_allclose(out.confidence, softmax_max(images), rtol=1e-4, atol=1e-5)


def test_load_segmenter_picks_the_backend_from_the_file(tiny_weights: Path, tiny_onnx: Path) -> None:
    assert load_segmenter(tiny_onnx).backend == "onnxruntime-cpu"
    assert load_segmenter(tiny_weights, device="cpu").backend == "torch-cpu"
    with pytest.raises(ModelError, match=r"onnx backend needs an \.onnx file"):
        load_segmenter(tiny_weights, backend="onnx")
    with pytest.raises(ModelError, match="runs on the onnx backend"):
        load_segmenter(tiny_onnx, backend="torch")


@pytest.mark.parametrize(
    "batch",
    [
        np.zeros((2, 64, 96), dtype=np.uint8),  # no colour axis
        np.zeros((2, 64, 96, 3), dtype=np.float32),  # float NumPy
        np.zeros((2, 60, 96, 3), dtype=np.uint8),  # height not a multiple of 8
        np.zeros((0, 64, 96, 3), dtype=np.uint8),  # empty batch
        torch.zeros((2, 64, 96, 3)),  # float tensor in NHWC order
    ],
)
def test_bad_batches_are_frame_errors(batch: object) -> None:
    with pytest.raises(FrameError, match=r"expected images|multiples of 8"):
        TorchSegmenter(tiny_model(), TINY, device="cpu").segment(batch)


@cuda
def test_cuda_labels_equal_cpu_labels_and_stay_on_the_gpu() -> None:
    images = random_images(4)
    cpu = TorchSegmenter(tiny_model(), TINY, device="cpu").segment(images, confidence=True)
    gpu = TorchSegmenter(tiny_model(), TINY, device="cuda").segment(images, confidence=True)
    assert gpu.labels.device.type == "cuda" and gpu.confidence.device.type == "cuda"
    assert (gpu.labels.cpu() != cpu.labels).float().mean() < 1e-3  # TF32 / kernel rounding may flip near-ties
    torch.testing.assert_close(gpu.confidence.cpu(), cpu.confidence, rtol=1e-3, atol=1e-3)


def test_default_device_is_cuda_when_present() -> None:
    seg = TorchSegmenter(tiny_model(), TINY)
    assert seg.backend == ("torch-cuda" if torch.cuda.is_available() else "torch-cpu")
