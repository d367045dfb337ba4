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

Measured for the shipped pruned network (the model card in shipped/models, BENCHMARKS.md): the labels of the int8
graph agree with the float graph's on 99.8% of pixels, and drive image mIoU is unchanged at three digits.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bev_service.errors import ModelError
from bev_service.runtime.int8 import file_sha256
from bev_service.runtime.onnx_backend import OnnxSegmenter
from bev_service.runtime.segmenter import ONNX_CONFIG_KEY, QUANT_KEY

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

    src = Path(source)
    if fmt not in FORMATS:
        raise ModelError(f"unknown quantization format {fmt!r}: expected one of {FORMATS}")
    float_model = onnx.load(str(src))
    meta = _float_graph_metadata(src, float_model, calibration)
    head = _classifier_nodes(float_model) if float_head else []
    if float_head and not head:
        raise ModelError(f"{src}: no ArgMax fed by a convolution found; cannot keep the classifier in float")
    batches = (calibration[i : i + batch] for i in range(0, len(calibration), batch))
    model = _quantized(src, fmt, float_model.graph.input[0].name, batches, exclude=head)
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
        pixels_as_input=_pixels_as_quantized(model),
    )
    target = _save_with_metadata(model, {**meta, QUANT_KEY: json.dumps(asdict(record))}, Path(out))
    log.info("wrote %s (%s, calibrated on %d images)", target, fmt, len(calibration))
    return target


def _float_graph_metadata(src: Path, float_model: Any, calibration: np.ndarray) -> dict[str, str]:
    """The float graph's metadata, after checking that it is a float ``bev export`` graph and that the
    calibration images fit its input."""
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
    return meta


def _quantized(src: Path, fmt: QuantFormatName, input_name: str, batches: Iterator[np.ndarray], *, exclude: list[str]) -> Any:
    """ONNX Runtime's static quantization of ``src``, calibrated (MinMax) on ``batches``; the nodes named in
    ``exclude`` stay float. Returns the quantized model (an ``onnx.ModelProto``)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            images = next(batches, None)
            return None if images is None else {input_name: images}

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
            nodes_to_exclude=exclude,
        )
        return onnx.load(str(quantized))


def _save_with_metadata(model: Any, meta: dict[str, str], target: Path) -> Path:
    """Write ``model`` with exactly ``meta`` as its metadata, atomically (a temporary file, then a rename)."""
    import onnx

    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    onnx.save_model(model, str(tmp))
    tmp.replace(target)
    return target


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
    constants = {init.name: init for init in graph.initializer}

    def constant(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(constants[name]) if name in constants else None

    chain = _input_chain(graph.input[0].name, readers, constant)
    if chain is None:
        log.warning("input is not Transpose -> Cast -> Div(255) -> QuantizeLinear; left as it is")
        return False
    transpose, cast, div, quant = chain
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


def _input_chain(
    input_name: str, readers: dict[str, list[Any]], constant: Callable[[str], np.ndarray | None]
) -> tuple[Any, Any, Any, Any] | None:
    """The nodes Transpose -> Cast -> Div(255) -> QuantizeLinear that the graph input alone feeds, each the only
    reader of the one before it; None when the graph does not start so."""

    def only_reader(tensor: str, op_type: str) -> Any | None:
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    transpose = only_reader(input_name, "Transpose")
    cast = only_reader(transpose.output[0], "Cast") if transpose is not None else None
    div = only_reader(cast.output[0], "Div") if cast is not None else None
    quant = only_reader(div.output[0], "QuantizeLinear") if div is not None else None
    divisor = constant(div.input[1]) if div is not None else None
    if transpose is None or cast is None or quant is None or divisor is None or divisor.size != 1 or float(divisor) != 255.0:
        return None
    return transpose, cast, div, quant


FOLD_OPS = frozenset({"Slice", "ReduceMax", "Max", "Concat"})  # ENet folding training-only classes into background


def _classifier_nodes(model: Any) -> list[str]:
    """Names of the class head (the convolution whose output an ArgMax reads, directly or through the folding
    of training-only classes: ``FOLD_OPS``), of the folding's nodes and of that ArgMax, for a float classifier:
    in QDQ form the quantizer would otherwise also round the logits to 8 bits for the ArgMax."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type != "ArgMax":
            continue
        heads, fold, todo = set(), [], [node.input[0]]
        while todo:
            producer = producers.get(todo.pop())
            if producer is None:
                continue
            if producer.op_type in ("Conv", "ConvTranspose"):
                heads.add(producer.name)
            elif producer.op_type in FOLD_OPS and producer.name not in fold:
                fold.append(producer.name)
                todo += list(producer.input)
        if len(heads) == 1:
            names += [*heads, *fold, node.name]
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
