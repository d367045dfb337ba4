"""Static int8 quantization of an exported ONNX graph, for ONNX Runtime on CPU.

``quantize_onnx`` takes a graph written by ``bev export`` (uint8 images in, uint8 labels out) and
writes the same graph with int8 convolutions: weights int8 per output channel (symmetric), activations
uint8 per tensor with ranges measured on calibration images (MinMax). ONNX Runtime then runs the
convolutions as integer kernels (VNNI or AMX-INT8 where the CPU has them) and keeps the argmax head
inside the graph as before. The input needs no conversion: the camera's uint8 pixels are already the
quantized form of the network's [0, 1] input, with scale 1/255 and zero point 0 (``_pixels_as_quantized``).
The classifier and its argmax stay float too (``float_head``): rounding the logits to 8 bits flips
thin classes where two logits are close.

The model config travels with the graph (``bev_model_config``, as in the float one), and a second
metadata entry, ``bev_quantization``, says how it was quantized, on what, and from which float graph
(its SHA-256). Quantization is done once, offline; the service only reads that record
(``quantized_from``) to serve an int8 graph while the float graph beside it is the one it came from.

Measured for the shipped pruned network (models/README.md, BENCHMARKS.md): the labels of the int8
graph agree with the float graph's on 99.8% of pixels, and drive image mIoU is unchanged at three digits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bev_service.model.backends import ONNX_CONFIG_KEY, QUANT_KEY, OnnxSegmenter
from bev_service.model.weights import ModelError

log = logging.getLogger(__name__)

QuantFormatName = Literal["qdq", "qoperator"]
FORMATS: tuple[str, ...] = ("qdq", "qoperator")


@dataclass(frozen=True)
class QuantizeRecord:
    """What ``bev_quantization`` holds: enough to say what the int8 graph is and to redo it."""

    source: str  # the float graph's file name
    source_sha256: str  # and its digest: an int8 graph left beside a newer float graph is stale (``quantized_from``)
    format: str  # "qdq" (QuantizeLinear / DequantizeLinear pairs) or "qoperator" (QLinearConv and kin)
    weights: str  # "int8, per channel, symmetric"
    activations: str  # "uint8, per tensor, asymmetric"
    calibration: str  # "MinMax"
    calibration_images: int
    calibration_data: str  # where the images came from, e.g. "synth data set 0, frame sets 0-7"
    float_head: bool  # the classifier convolution and its argmax left in float
    pixels_as_input: bool  # the uint8 pixels feed the first convolution as they are (scale 1/255, zero point 0)


def quantize_onnx(
    source: str | Path,
    out: str | Path,
    calibration: np.ndarray,
    *,
    fmt: QuantFormatName = "qdq",
    calibration_data: str = "",
    batch: int = 4,
    float_head: bool = True,
) -> Path:
    """Write ``source`` (a float graph from ``bev export``) quantized to int8 at ``out``.

    ``calibration``: uint8 images (N, H, W, 3) at the network's input size, fed ``batch`` at a time;
    they should look like what the network will see (training frames, not the evaluation ones).
    ``float_head``: keep the classifier (the convolution whose logits the ArgMax reads) in float, so that
    close logits are not rounded onto one uint8 step before the argmax picks between them.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = Path(source)
    if fmt not in FORMATS:
        raise ModelError(f"unknown quantization format {fmt!r}: expected one of {FORMATS}")
    float_model = onnx.load(str(src))
    meta = {p.key: p.value for p in float_model.metadata_props}
    if ONNX_CONFIG_KEY not in meta:
        raise ModelError(f"{src}: ONNX model without {ONNX_CONFIG_KEY!r} metadata (write it with bev export)")
    if QUANT_KEY in meta:
        raise ModelError(f"{src} is already quantized ({meta[QUANT_KEY]}); quantize the float graph")
    h, w = json.loads(meta[ONNX_CONFIG_KEY])["input_size_hw"]
    if calibration.dtype != np.uint8 or calibration.ndim != 4 or calibration.shape[1:] != (h, w, 3):
        raise ModelError(f"calibration images must be uint8 (N, {h}, {w}, 3), got {calibration.dtype} {calibration.shape}")
    if len(calibration) == 0:
        raise ModelError("no calibration images")
    input_name = float_model.graph.input[0].name
    head = _classifier_nodes(float_model) if float_head else []
    if float_head and not head:
        raise ModelError(f"{src}: no ArgMax fed by a convolution found; cannot keep the classifier in float")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = (calibration[i : i + batch] for i in range(0, len(calibration), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            images = next(self._batches, None)
            return None if images is None else {input_name: images}

    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bev-quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quantized = Path(scratch) / "quantized.onnx"
        # Shape inference and ORT's constant folding first, as ONNX Runtime's quantization guide asks.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=head,
        )
        model = onnx.load(str(quantized))
    pixels_as_input = _pixels_as_quantized(model)
    record = QuantizeRecord(
        source=src.name,
        source_sha256=file_sha256(src),
        format=fmt,
        weights="int8, per channel, symmetric",
        activations="uint8, per tensor, asymmetric",
        calibration="MinMax",
        calibration_images=len(calibration),
        calibration_data=calibration_data,
        float_head=float_head,
        pixels_as_input=pixels_as_input,
    )
    del model.metadata_props[:]
    for key, value in (*meta.items(), (QUANT_KEY, json.dumps(asdict(record)))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    tmp = target.with_name(f".{target.name}.tmp")
    onnx.save_model(model, str(tmp))
    tmp.replace(target)
    log.info("wrote %s (%s, calibrated on %d images)", target, fmt, len(calibration))
    return target


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def quantized_from(int8_path: str | Path, float_path: str | Path) -> bool:
    """Whether ``int8_path`` is an int8 graph that ``quantize_onnx`` wrote from the float graph now at ``float_path``."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        meta = {p.key: p.value for p in onnx.load(str(int8_path), load_external_data=False).metadata_props}
        record = json.loads(meta.get(QUANT_KEY, "null"))
    except (OSError, ValueError, DecodeError) as exc:
        log.warning("%s: unreadable (%s)", int8_path, exc)
        return False
    return isinstance(record, dict) and record.get("source_sha256") == file_sha256(float_path)


def int8_beside(float_path: str | Path) -> Path | None:
    """The int8 graph ``bev quantize`` leaves beside a float graph (``<stem>-int8.onnx``, as ``make train`` names
    it) when it is there and was quantized from that float graph as it is now; else None (a stale one is logged)."""
    float_path = Path(float_path)
    int8 = float_path.with_name(f"{float_path.stem}-int8.onnx")
    if not int8.is_file():
        return None
    if quantized_from(int8, float_path):
        return int8
    log.warning("%s was not quantized from %s as it is now (run bev quantize); using the float graph", int8, float_path)
    return None


def _pixels_as_quantized(model: Any) -> bool:
    """Feed the uint8 pixels straight to the first quantized convolution (in place); whether it was done.

    The exported graph turns pixels into the network's input with ``Cast`` and ``Div(255)``, and the quantizer
    then adds a ``QuantizeLinear`` that takes them back to uint8 at its calibrated scale (1/255 when the
    calibration images hold both 0 and 255). Three passes over every pixel (about 5% of the int8 graph's
    kernel time in ONNX Runtime's profiler) that give back what came in: the pixels are the exact uint8 form
    of that input with scale 1/255 and zero point 0. So the QuantizeLinear's readers take the permuted pixels
    with those parameters, which is also exact when the calibrated range was narrower than [0, 1]. Only for
    uint8 activations: an int8 zero point would not read uint8 pixels.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def only_reader(tensor: str, op_type: str) -> Any | None:
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    transpose = only_reader(graph.input[0].name, "Transpose")
    cast = only_reader(transpose.output[0], "Cast") if transpose is not None else None
    div = only_reader(cast.output[0], "Div") if cast is not None else None
    quant = only_reader(div.output[0], "QuantizeLinear") if div is not None else None
    constants = {init.name: init for init in graph.initializer}

    def constant(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(constants[name]) if name in constants else None

    divisor = constant(div.input[1]) if div is not None else None
    if transpose is None or cast is None or quant is None or divisor is None or divisor.size != 1 or float(divisor) != 255.0:
        log.warning("input is not Transpose -> Cast -> Div(255) -> QuantizeLinear; left as it is")
        return False
    quant_zero_point = constant(quant.input[2]) if len(quant.input) > 2 else None  # absent: uint8 zero
    if quant_zero_point is not None and quant_zero_point.dtype != np.uint8:
        log.warning("input quantized to %s, not uint8; left as it is", quant_zero_point.dtype)
        return False
    scale, zero_point = f"{graph.input[0].name}_pixel_scale", f"{graph.input[0].name}_pixel_zero_point"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), scale),
            helper.make_tensor(zero_point, TensorProto.UINT8, [], [0]),
        ]
    )
    renamed = {quant.output[0]: transpose.output[0], quant.input[1]: scale}
    if len(quant.input) > 2:
        renamed[quant.input[2]] = zero_point
    for node in readers.get(quant.output[0], []):
        inputs = [renamed.get(name, name) for name in node.input]
        del node.input[:]
        node.input.extend(inputs)
    for node in (cast, div, quant):
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return True


def _classifier_nodes(model: Any) -> list[str]:
    """Names of the class head (the convolution whose output an ArgMax reads) and of that ArgMax, for a float
    classifier: in QDQ form the quantizer would otherwise also round the logits to 8 bits for the ArgMax."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        head = producers.get(node.input[0]) if node.op_type == "ArgMax" else None
        if head is not None and head.op_type in ("Conv", "ConvTranspose"):
            names += [head.name, node.name]
    return names


@dataclass(frozen=True)
class QuantizeCheck:
    """How the int8 graph's labels compare with the float graph's on the same images."""

    pixels: int
    agreement: float  # share of pixels with the same label
    per_class_agreement: dict[str, float | None]  # of the float graph's pixels of each class, the share kept


def check_quantized(float_path: str | Path, int8_path: str | Path, images: np.ndarray) -> QuantizeCheck:
    """Run ``images`` (uint8 (N, H, W, 3)) through both graphs and compare their labels, overall and per class
    (a thin class can lose much while the overall agreement stays high)."""
    ref = OnnxSegmenter(float_path, classes=None)
    got = OnnxSegmenter(int8_path, classes=None).segment(images).labels
    want = ref.segment(images).labels
    names: Sequence[str] = ref.config.class_names
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(names):
        mask = want == k
        per_class[name] = float((got[mask] == k).mean()) if mask.any() else None
    return QuantizeCheck(pixels=int(want.size), agreement=float((want == got).mean()), per_class_agreement=per_class)
