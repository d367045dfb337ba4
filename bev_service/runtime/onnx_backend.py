"""The ONNX Runtime backend: a graph from ``bev export`` (ArgMax and Cast to uint8 inside) on the CPU. No torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bev_service.classes import CLASS_NAMES
from bev_service.errors import ModelError
from bev_service.runtime.model_config import ModelConfig, check_classes
from bev_service.runtime.segmenter import ONNX_CONFIG_KEY, QUANT_KEY, Segmentation, Segmenter, check_batch, is_torch_tensor


def _uint8_nhwc(batch: Any) -> np.ndarray:
    """The ONNX graph takes uint8 (N, H, W, 3); float (N, 3, H, W) [0, 1] batches are quantised to it."""
    if is_torch_tensor(batch):
        import torch

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
        self, path: str | Path, *, classes: tuple[str, ...] | None = CLASS_NAMES, threads: int = 0, spin: bool = False
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
