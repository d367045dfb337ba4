"""ONNX export with the argmax head inside the graph, and a check that ONNX Runtime agrees with torch.

The graph takes uint8 RGB (N, H, W, 3) and ends in ArgMax and a Cast to uint8, so normalisation,
the network and the argmax all run inside ONNX Runtime and the logits never leave it. Batch, height
and width are dynamic (height and width as multiples of 8). The model config travels in the
graph's metadata so that the runtime can check the class table and the input size.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bev_service.errors import ModelError
from bev_service.runtime.enet import ENet, network_input
from bev_service.runtime.model_config import INPUT_MULTIPLE, ModelConfig
from bev_service.runtime.onnx_backend import OnnxSegmenter
from bev_service.runtime.segmenter import ONNX_CONFIG_KEY
from bev_service.runtime.torch_backend import ArgmaxNet, TorchSegmenter

log = logging.getLogger(__name__)

OPSET = 18
MAX_SIDE_PX = 8192


def export_onnx(model: ENet, config: ModelConfig, path: str | Path, *, confidence: bool = False) -> Path:
    """Write ``model`` with its argmax head (and the softmax maximum with ``confidence``) as ONNX."""
    import onnx

    head = ArgmaxNet(model.cpu().eval(), with_confidence=confidence).eval()
    h, w = config.input_size_hw
    example = torch.zeros((2, h, w, 3), dtype=torch.uint8)
    dim = torch.export.Dim
    side_max = MAX_SIDE_PX // INPUT_MULTIPLE
    # Height and width are declared multiples of 8 so that the exporter can prove the skip additions' shapes equal.
    shapes = {
        "images": {
            0: dim("batch", min=1, max=256),
            1: INPUT_MULTIPLE * dim("height_8", min=1, max=side_max),
            2: INPUT_MULTIPLE * dim("width_8", min=1, max=side_max),
        }
    }
    outputs = ["labels", "confidence"] if confidence else ["labels"]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), _quiet_exporter(), torch.inference_mode(False):
        # torch.export's own use of a deprecated pytree API (torch 2.13); not ours to fix.
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        program = torch.onnx.export(
            head, (example,), dynamo=True, input_names=["images"], output_names=outputs,
            dynamic_shapes=shapes, opset_version=OPSET, optimize=True, verbose=False,
        )  # fmt: skip
    if program is None:
        raise ModelError("ONNX export returned no program")
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_CONFIG_KEY, json.dumps(config.with_channels(model).to_dict())
    tmp = target.with_name(f".{target.name}.tmp")
    onnx.save_model(proto, str(tmp))
    tmp.replace(target)
    log.info("wrote %s (%d nodes, outputs %s)", target, len(proto.graph.node), outputs)
    return target


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs every optimisation pass at INFO and warns that torchvision (whose operators
    this network does not use) is absent; keep the command's output to what matters."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass(frozen=True)
class ExportCheck:
    """How ONNX Runtime's labels compare with torch's on the same input."""

    pixels: int
    mismatched: int
    mismatched_clear: int  # mismatches where torch's top-2 logit margin exceeds ``margin``
    max_confidence_error: float | None

    @property
    def agreement(self) -> float:
        return 1.0 - self.mismatched / max(self.pixels, 1)


def check_onnx(model: ENet, config: ModelConfig, path: str | Path, images: np.ndarray, *, margin: float = 1e-3) -> ExportCheck:
    """Run ``images`` (uint8 (N, H, W, 3)) through torch (CPU) and ONNX Runtime and compare labels.

    Float rounding may flip the argmax where two logits are within a hair of each other; mismatches
    elsewhere (``mismatched_clear``) mean the export is wrong.
    """
    ort_seg = OnnxSegmenter(path, classes=None)
    torch_seg = TorchSegmenter(model, config, device="cpu")
    want_conf = ort_seg.has_confidence
    expected = torch_seg.segment(images, confidence=want_conf)
    got = ort_seg.segment(images, confidence=want_conf)
    with torch.inference_mode():
        logits = model(network_input(torch.from_numpy(images)))  # (N, C, H, W)
        top2 = logits.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1] > margin).numpy()  # (N, H, W)
    diff = expected.labels_numpy() != got.labels
    conf_err = None
    if want_conf:
        conf_err = float(np.abs(expected.confidence_numpy() - got.confidence).max())  # type: ignore[operator]
    return ExportCheck(
        pixels=int(diff.size),
        mismatched=int(diff.sum()),
        mismatched_clear=int((diff & clear).sum()),
        max_confidence_error=conf_err,
    )
