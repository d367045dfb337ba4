"""Segmenters: images in, uint8 label maps out, with the argmax inside the backend on its device.

One interface, two backends:
- ``TorchSegmenter`` (``runtime/torch_backend.py``): PyTorch eager on CUDA when present, else on the CPU.
  Labels (and the optional max probability) come back as torch tensors on that device, ready for
  ``BevProjector.warp_labels`` there; the logits never leave it.
- ``OnnxSegmenter`` (``runtime/onnx_backend.py``): ONNX Runtime on the CPU over a graph that ends in ArgMax
  and a Cast to uint8 (``bev export``), so the logits never leave the runtime either. Returns NumPy arrays.

Input: a uint8 batch (N, H, W, 3) RGB (NumPy or torch, any device), or a float torch batch
(N, 3, H, W) in [0, 1]; H and W multiples of 8. Output: labels uint8 (N, H, W) and, on request,
the softmax maximum float32 (N, H, W) in (0, 1] for confidence fusion.

This module imports no torch: serving on ONNX Runtime runs without it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bev_service.classes import CLASS_NAMES
from bev_service.errors import FrameError, ModelError
from bev_service.runtime.model_config import INPUT_MULTIPLE, ModelConfig

ONNX_CONFIG_KEY = "bev_model_config"  # ONNX metadata_props entry holding ModelConfig as JSON
QUANT_KEY = "bev_quantization"  # ... and how an int8 graph was quantized, as JSON (training/quantize.py); absent when float


def is_torch_tensor(array: Any) -> bool:
    """Whether ``array`` is a torch tensor, without importing torch when nothing has."""
    return type(array).__module__.startswith("torch")


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device (False without torch: the ONNX Runtime-only install)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class Segmentation:
    """A backend's output: torch tensors on the backend's device, or NumPy arrays (ONNX Runtime)."""

    labels: Any  # uint8 (N, H, W)
    confidence: Any | None = None  # float32 (N, H, W), when asked for

    def labels_numpy(self) -> np.ndarray:
        return _to_numpy(self.labels)

    def confidence_numpy(self) -> np.ndarray | None:
        return None if self.confidence is None else _to_numpy(self.confidence)


def _to_numpy(array: Any) -> np.ndarray:
    return array.cpu().numpy() if is_torch_tensor(array) else np.asarray(array)


def check_batch(batch: Any) -> tuple[int, int]:
    """FrameError unless ``batch`` is uint8 (N, H, W, 3) or float torch (N, 3, H, W) with H, W multiples of 8."""
    shape = tuple(batch.shape) if hasattr(batch, "shape") else None
    is_float = is_torch_tensor(batch) and batch.is_floating_point()
    dtype_ok = is_float or ((isinstance(batch, np.ndarray) or is_torch_tensor(batch)) and str(batch.dtype).endswith("uint8"))
    if shape is None or not dtype_ok or len(shape) != 4 or shape[1 if is_float else 3] != 3:
        got = f"{type(batch).__name__} {getattr(batch, 'dtype', '')} {shape}"
        raise FrameError(f"expected images as uint8 (N, H, W, 3) or a float tensor (N, 3, H, W), got {got}")
    h, w = (shape[2], shape[3]) if is_float else (shape[1], shape[2])
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE or h == 0 or w == 0 or shape[0] == 0:
        raise FrameError(f"network input must be a non-empty batch of multiples of {INPUT_MULTIPLE} pixels, got {w}x{h} (w x h)")
    return h, w


class Segmenter(ABC):
    """Images to uint8 label maps; argmax and confidence computed on the backend's device."""

    config: ModelConfig
    backend: str  # "torch-cpu", "torch-cuda", "onnxruntime-cpu"

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def input_size_hw(self) -> tuple[int, int]:
        """The size the network was trained at: resize frames to this before ``segment``."""
        return self.config.input_size_hw

    @abstractmethod
    def segment(self, batch: Any, *, confidence: bool = False) -> Segmentation: ...


def load_segmenter(
    path: str | Path,
    *,
    backend: str = "auto",
    device: str | None = None,
    classes: tuple[str, ...] | None = CLASS_NAMES,
) -> Segmenter:
    """A segmenter for a model file: ``.onnx`` runs on ONNX Runtime, anything else on PyTorch.

    ``backend`` ``"torch"`` or ``"onnx"`` insists on one (an ``.onnx`` file cannot run on PyTorch).
    """
    is_onnx = Path(path).suffix.lower() == ".onnx"
    if backend not in ("auto", "torch", "onnx"):
        raise ModelError(f"unknown backend {backend!r}: expected auto, torch or onnx")
    if backend == "torch" and is_onnx:
        raise ModelError(f"{path}: an ONNX file runs on the onnx backend; give the .pt weights for torch")
    if backend == "onnx" and not is_onnx:
        raise ModelError(f"{path}: the onnx backend needs an .onnx file (write one with bev export)")
    if is_onnx:
        from bev_service.runtime.onnx_backend import OnnxSegmenter

        return OnnxSegmenter(path, classes=classes)
    try:
        from bev_service.runtime.torch_backend import TorchSegmenter
    except ImportError as exc:
        raise ModelError(f"{path}: the torch backend needs PyTorch, not installed here ({exc}); serve the .onnx") from exc
    return TorchSegmenter.from_file(path, device=device, classes=classes)
