"""Segmenters: images in, uint8 label maps out, with the argmax inside the backend on its device.

One interface, two backends:
- ``TorchSegmenter``: PyTorch eager on CUDA when present, else on the CPU. Labels (and the optional
  max probability) come back as torch tensors on that device, ready for ``BevProjector.warp_labels``
  there; the logits never leave it.
- ``OnnxSegmenter``: ONNX Runtime on the CPU over a graph that ends in ArgMax and a Cast to uint8
  (``bev export``), so the logits never leave the runtime either. Returns NumPy arrays.

Input: a uint8 batch (N, H, W, 3) RGB (NumPy or torch, any device), or a float torch batch
(N, 3, H, W) in [0, 1]; H and W multiples of 8. Output: labels uint8 (N, H, W) and, on request,
the softmax maximum float32 (N, H, W) in (0, 1] for confidence fusion.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bev_service.errors import FrameError
from bev_service.model.config import ModelConfig
from bev_service.model.enet import INPUT_MULTIPLE, ENet, fold_batch_norms, network_input
from bev_service.model.weights import CLASS_NAMES, ModelError, check_classes, load_model

log = logging.getLogger(__name__)

ONNX_CONFIG_KEY = "bev_model_config"  # ONNX metadata_props entry holding ModelConfig as JSON
QUANT_KEY = "bev_quantization"  # ... and how an int8 graph was quantized, as JSON (model/quantize.py); absent when float
DEFAULT_CLASSES = CLASS_NAMES


class ArgmaxNet(nn.Module):
    """A network with its input conversion and its argmax head: what runs inside a backend.

    uint8 (N, H, W, 3) -> labels uint8 (N, H, W) [, confidence float32 (N, H, W)].
    """

    def __init__(self, net: ENet, *, with_confidence: bool = False) -> None:
        super().__init__()
        self.net = net
        self.with_confidence = with_confidence

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.from_float(network_input(images))

    def from_float(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)  # (N, C, H, W)
        labels = logits.argmax(dim=1).to(torch.uint8)  # (N, H, W)
        if not self.with_confidence:
            return labels
        # max softmax = 1 / sum(exp(l - max l)): no (N, C, H, W) probability tensor is kept.
        top = logits.amax(dim=1, keepdim=True)  # (N, 1, H, W)
        confidence = torch.reciprocal(torch.exp(logits - top).sum(dim=1))  # (N, H, W)
        return labels, confidence


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
    return array.cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def check_batch(batch: Any) -> tuple[int, int]:
    """FrameError unless ``batch`` is uint8 (N, H, W, 3) or float torch (N, 3, H, W) with H, W multiples of 8."""
    shape = tuple(batch.shape) if hasattr(batch, "shape") else None
    is_float = isinstance(batch, torch.Tensor) and batch.is_floating_point()
    dtype_ok = is_float or (isinstance(batch, np.ndarray | torch.Tensor) and str(batch.dtype).endswith("uint8"))
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


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchSegmenter(Segmenter):
    """PyTorch eager; the device is CUDA when available unless given.

    Runs a copy of the model with its batch norms folded into the convolutions (``fold_batch_norms``):
    later changes to ``model`` do not reach the segmenter. A uint8 (N, H, W, 3) batch permuted to
    (N, 3, H, W) is channels-last already, so oneDNN runs the convolutions in its native layout.
    """

    def __init__(self, model: ENet, config: ModelConfig, *, device: str | torch.device | None = None) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        self.backend = f"torch-{self.device.type}"
        model = fold_batch_norms(model).to(self.device)
        self._plain = ArgmaxNet(model).eval()
        self._with_confidence = ArgmaxNet(model, with_confidence=True).eval()

    @classmethod
    def from_file(
        cls, path: str | Path, *, device: str | torch.device | None = None, classes: tuple[str, ...] | None = DEFAULT_CLASSES
    ) -> TorchSegmenter:
        loaded = load_model(path, classes=classes)
        return cls(loaded.model, loaded.config, device=device)

    @torch.inference_mode()
    def segment(self, batch: Any, *, confidence: bool = False) -> Segmentation:
        check_batch(batch)
        head = self._with_confidence if confidence else self._plain
        x = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
        x = x.to(self.device, non_blocking=True)
        out = head.from_float(x) if x.is_floating_point() else head(x)
        if isinstance(out, tuple):
            return Segmentation(labels=out[0], confidence=out[1])
        return Segmentation(labels=out)


def _uint8_nhwc(batch: Any) -> np.ndarray:
    """The ONNX graph takes uint8 (N, H, W, 3); float (N, 3, H, W) [0, 1] batches are quantised to it."""
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point():
            batch = (batch.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        return np.ascontiguousarray(batch.cpu().numpy())
    return np.ascontiguousarray(batch)


class OnnxSegmenter(Segmenter):
    """ONNX Runtime on the CPU over a graph written by ``export_onnx`` (ArgMax and Cast to uint8 inside).

    Its worker threads sleep between runs (``spin=False``). ONNX Runtime's default lets them busy-wait
    after every run, and on a 2-core machine they then take the cores from whatever runs next: the
    pipeline's JPEG decoding and warp, the service's HTTP handling, another session. Timed interleaved
    with other segmenters, as ``bench/model.py`` does, a pruned session run after an unpruned one took
    69-73 ms with spinning against 54 ms without, and torch runs after them were slowed by up to 45%.
    """

    backend = "onnxruntime-cpu"

    def __init__(
        self, path: str | Path, *, classes: tuple[str, ...] | None = DEFAULT_CLASSES, threads: int = 0, spin: bool = False
    ) -> None:
        import onnxruntime as ort

        source = Path(path)
        if not source.is_file():
            raise ModelError(f"model file {source} does not exist" if not source.exists() else f"{source} is not a file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per physical core
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self._session = ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
            raise ModelError(f"{source}: cannot load as an ONNX model, truncated or not ONNX ({exc})") from exc
        self.path = source
        self.config = self._read_config(source)
        quantization = self._session.get_modelmeta().custom_metadata_map.get(QUANT_KEY)
        self.quantization: dict[str, Any] | None = json.loads(quantization) if quantization else None
        if classes is not None:
            check_classes(source, self.config, classes)
        self._outputs = [o.name for o in self._session.get_outputs()]
        if self._outputs[0] != "labels":
            raise ModelError(f"{source}: expected a graph with a 'labels' output (from bev export), got {self._outputs}")

    def _read_config(self, source: Path) -> ModelConfig:
        meta = self._session.get_modelmeta().custom_metadata_map
        if ONNX_CONFIG_KEY not in meta:
            raise ModelError(f"{source}: ONNX model without {ONNX_CONFIG_KEY!r} metadata (write it with bev export)")
        try:
            return ModelConfig.from_dict(json.loads(meta[ONNX_CONFIG_KEY]))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source}: bad model config in the ONNX metadata: {exc}") from exc

    @property
    def has_confidence(self) -> bool:
        return "confidence" in self._outputs

    def segment(self, batch: Any, *, confidence: bool = False) -> Segmentation:
        check_batch(batch)
        if confidence and not self.has_confidence:
            raise ModelError(f"{self.path}: this ONNX graph has no confidence output (export with --confidence)")
        names = ["labels", "confidence"] if confidence else ["labels"]
        out = self._session.run(names, {"images": _uint8_nhwc(batch)})
        return Segmentation(labels=out[0], confidence=out[1] if confidence else None)


def load_segmenter(
    path: str | Path,
    *,
    backend: str = "auto",
    device: str | None = None,
    classes: tuple[str, ...] | None = DEFAULT_CLASSES,
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
        return OnnxSegmenter(path, classes=classes)
    return TorchSegmenter.from_file(path, device=device, classes=classes)
