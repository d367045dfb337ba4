"""Static int8 quantization of exported graphs (``bev_service/model/quantize.py``, ``bev quantize``) and the
service's choice of the int8 graph, on a tiny network trained for a few seconds on procedural frame sets so
that its labels are not near-ties everywhere."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from bev_service.cli.main import main
from bev_service.errors import ModelError
from bev_service.runtime.onnx_backend import OnnxSegmenter
from bev_service.runtime.segmenter import ONNX_CONFIG_KEY, QUANT_KEY
from bev_service.runtime.weights import save_model
from bev_service.service.settings import Settings
from bev_service.service.state import resolve_model
from bev_service.training.data import ArraySource
from bev_service.training.export import export_onnx
from bev_service.training.quantize import _pixels_as_quantized, check_quantized, quantize_onnx
from bev_service.training.train import BatchSampler, Trainer
from tests.conftest import DEFAULT_RIG
from tests.live_server import running_server
from tests.networks import TINY, TINY_SIZE_HW, procedural_source, tiny_model
from tests.training.test_train import tiny_run


def images_of(source: ArraySource) -> np.ndarray:
    return np.concatenate([source[i].images for i in range(len(source))])  # (frame sets * 4, H, W, 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny network after 60 steps on procedural frame sets, saved as weights and exported to a float graph."""
    model = tiny_model()
    config = tiny_run(tmp_path_factory.mktemp("train"), steps=60)
    trainer = Trainer(model, BatchSampler(procedural_source(12, seed=1), 8, None, 0), torch.ones(8), config, 60)
    for step in range(60):
        trainer.step(step)
    folder = tmp_path_factory.mktemp("graphs")
    save_model(folder / "tiny.pt", trainer.model.eval(), TINY, {"note": "60 steps on procedural frame sets"})
    export_onnx(trainer.model, TINY, folder / "tiny.onnx")
    return folder / "tiny.onnx"


@pytest.fixture(scope="module", params=["qoperator", "qdq"])
def int8(request: pytest.FixtureRequest, trained: Path) -> Path:
    out = trained.with_name(f"tiny-int8-{request.param}.onnx")
    return quantize_onnx(trained, out, images_of(procedural_source(2, seed=3)), fmt=request.param, calibration_data="procedural")


def test_convolutions_run_in_int8_and_the_classifier_stays_float(int8: Path) -> None:
    graph = onnx.load(str(int8)).graph
    ops = Counter(node.op_type for node in graph.node)
    if ops["QLinearConv"]:  # QOperator: integer convolutions
        assert ops["Conv"] == 0
    else:  # QDQ: every convolution reads dequantized int8 weights
        weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        assert ops["Conv"] > 10 and all(n.input[1] in weights for n in graph.node if n.op_type == "Conv"), (
            "a convolution kept float weights"
        )
    producers = {out: node for node in graph.node for out in node.output}
    argmax = next(n for n in graph.node if n.op_type == "ArgMax")
    head = producers[argmax.input[0]]
    assert head.op_type == "ConvTranspose"
    initializers = {t.name: t for t in graph.initializer}
    assert numpy_helper.to_array(initializers[head.input[1]]).dtype == np.float32  # logits are not rounded to 8 bits


def test_the_pixels_feed_the_first_integer_convolution_unconverted(int8: Path) -> None:
    graph = onnx.load(str(int8)).graph
    ops = Counter(node.op_type for node in graph.node)
    # The one Cast left turns the labels to uint8.
    assert ops["Div"] == 0 and ops["Cast"] == 1, "the input is still converted to float and back"
    transpose = next(n for n in graph.node if graph.input[0].name in n.input)
    readers = [n for n in graph.node if transpose.output[0] in n.input]
    assert [n.op_type for n in readers] in (["DequantizeLinear"], ["QLinearConv"])
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    scale, zero_point = initializers[readers[0].input[1]], initializers[readers[0].input[2]]
    assert scale == np.float32(1 / 255) and zero_point == 0 and zero_point.dtype == np.uint8


def test_feeding_the_pixels_is_exact_where_the_calibrated_input_range_was_narrower() -> None:
    """A graph that quantizes the input at a range calibrated on dim images (scale 0.5/255, zero point 3) clips
    and rounds bright pixels; fed the pixels directly, it reads every value exactly."""
    from onnx import TensorProto, helper

    def tensor(name: str, dtype: int, shape: list[int]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, dtype, shape)

    nodes = [
        helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["as_float", "k255"], ["unit"]),
        helper.make_node("QuantizeLinear", ["unit", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["out"]),
    ]
    constants = [
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "k255"),
        numpy_helper.from_array(np.array(0.5 / 255, dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(3, dtype=np.uint8), "z"),
    ]
    inputs, outputs = [tensor("images", TensorProto.UINT8, [1, 2, 128, 3])], [tensor("out", TensorProto.FLOAT, [1, 3, 2, 128])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)  # what bev export writes
    pixels = np.arange(256 * 3, dtype=np.uint16).reshape(1, 2, 128, 3).astype(np.uint8)  # every value, in every channel
    want = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255

    def run(proto: onnx.ModelProto) -> np.ndarray:
        import onnxruntime as ort

        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"images": pixels})[0])

    assert np.abs(run(model) - want).max() > 0.4  # the calibrated range clips the bright half
    signed = onnx.ModelProto()
    signed.CopyFrom(model)
    signed.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8), "z"))
    assert not _pixels_as_quantized(signed)  # int8 activations cannot read uint8 pixels: left as they are
    assert [n.op_type for n in signed.graph.node] == ["Transpose", "Cast", "Div", "QuantizeLinear", "DequantizeLinear"]
    assert _pixels_as_quantized(model)
    assert [n.op_type for n in model.graph.node] == ["Transpose", "DequantizeLinear"]
    assert {t.name for t in model.graph.initializer} == {"images_pixel_scale", "images_pixel_zero_point"}
    np.testing.assert_allclose(run(model), want, rtol=0, atol=1e-7)
    assert not _pixels_as_quantized(model)  # nothing left to rewrite: the graph stays as it is


def test_the_int8_graph_carries_the_config_and_how_it_was_quantized(int8: Path, trained: Path) -> None:
    meta = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    float_meta = {p.key: p.value for p in onnx.load(str(trained)).metadata_props}
    assert meta[ONNX_CONFIG_KEY] == float_meta[ONNX_CONFIG_KEY]
    record = json.loads(meta[QUANT_KEY])
    assert record["calibration_images"] == 8 and record["calibration_data"] == "procedural"
    assert record["format"] in int8.name and record["float_head"] is True and record["source"] == "tiny.onnx"
    assert record["pixels_as_input"] is True
    assert OnnxSegmenter(int8).quantization == record and OnnxSegmenter(trained).quantization is None


def test_the_int8_graph_segments_like_the_float_graph(int8: Path, trained: Path) -> None:
    held_out = images_of(procedural_source(3, seed=4))  # 12 images none of the calibration saw
    check = check_quantized(trained, int8, held_out)
    assert check.pixels == held_out.shape[0] * held_out.shape[1] * held_out.shape[2]
    assert check.agreement > 0.97, check
    labels = OnnxSegmenter(int8).segment(held_out[:3]).labels
    assert labels.dtype == np.uint8 and labels.shape == (3, *TINY_SIZE_HW)
    other = np.ascontiguousarray(np.concatenate([held_out[:2], held_out[:2]], axis=2))  # 64x192: sizes stay dynamic
    assert OnnxSegmenter(int8).segment(other).labels.shape == (2, 64, 192)


def test_quantizing_needs_an_exported_float_graph_and_images_of_its_input_size(int8: Path, trained: Path, tmp_path: Path) -> None:
    images = images_of(procedural_source(1, seed=3))
    with pytest.raises(ModelError, match="already quantized"):
        quantize_onnx(int8, tmp_path / "twice.onnx", images)
    bare = onnx.load(str(trained))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelError, match="without 'bev_model_config' metadata"):
        quantize_onnx(tmp_path / "bare.onnx", tmp_path / "out.onnx", images)
    with pytest.raises(ModelError, match=r"calibration images must be uint8 \(N, 64, 96, 3\)"):
        quantize_onnx(trained, tmp_path / "out.onnx", images[:, :32])
    with pytest.raises(ModelError, match="calibration images must be uint8"):
        quantize_onnx(trained, tmp_path / "out.onnx", images.astype(np.float32))
    with pytest.raises(ModelError, match="unknown quantization format"):
        quantize_onnx(trained, tmp_path / "out.onnx", images, fmt="int4")  # type: ignore[arg-type]
    assert not (tmp_path / "out.onnx").exists()


def test_bev_quantize_renders_calibration_frames_and_reports_the_agreement(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "int8.onnx"
    args = ["quantize", "--model", str(trained), "--out", str(out), "--rig", str(DEFAULT_RIG), "--frame-sets", "1"]
    assert main([*args, "--check-frame-sets", "1", "--val-seed", "5", "--min-agreement", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["onnx"] == str(out) and report["pixels"] == 4 * TINY_SIZE_HW[0] * TINY_SIZE_HW[1]
    assert 0.5 <= report["agreement"] <= 1.0 and set(report["per_class_agreement"]) == set(TINY.class_names)
    record = OnnxSegmenter(out).quantization
    assert record is not None and record["calibration_data"] == "synth data set 0, frame sets 0-0"
    assert record["calibration_images"] == 4 and record["format"] == "qdq"


def test_bev_quantize_fails_below_the_agreement_floor_and_on_a_weights_file(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    untrained = export_onnx(tiny_model(), TINY, tmp_path / "untrained.onnx")  # near-tied logits: int8 flips some labels
    out = tmp_path / "int8.onnx"
    args = ["quantize", "--model", str(untrained), "--out", str(out), "--rig", str(DEFAULT_RIG), "--frame-sets", "1"]
    assert main([*args, "--check-frame-sets", "1", "--min-agreement", "1.0"]) == 2
    assert "of the labels agree with the float graph (--min-agreement 1.0)" in capsys.readouterr().err
    assert main(["quantize", "--model", str(tiny_weights), "--out", str(tmp_path / "w.onnx"), "--frame-sets", "1"]) == 2
    assert "cannot load as an ONNX model" in capsys.readouterr().err
    assert main([*args, "--frame-sets", "0"]) == 2
    assert "--frame-sets must be at least 1" in capsys.readouterr().err


@pytest.fixture
def model_folder(trained: Path, tmp_path: Path) -> Path:
    """What make train leaves in models/: weights, the float graph beside them, its int8 graph beside that."""
    for name in ("tiny.pt", "tiny.onnx"):
        shutil.copy(trained.with_name(name), tmp_path / name)
    quantize_onnx(tmp_path / "tiny.onnx", tmp_path / "tiny-int8.onnx", images_of(procedural_source(1, seed=3)))
    return tmp_path


def test_the_service_serves_the_int8_graph_beside_the_weights_while_it_is_current(model_folder: Path) -> None:
    weights, float_graph, int8_graph = (model_folder / n for n in ("tiny.pt", "tiny.onnx", "tiny-int8.onnx"))
    on_cpu = {"device": "cpu"}
    assert resolve_model(Settings(model=weights, backend="onnx", **on_cpu)) == (int8_graph, "onnx")
    assert resolve_model(Settings(model=weights, backend="onnx", int8=False, **on_cpu)) == (float_graph, "onnx")
    assert resolve_model(Settings(model=float_graph, backend="auto", **on_cpu)) == (float_graph, "onnx")  # named: as named
    assert resolve_model(Settings(model=weights, backend="torch", **on_cpu)) == (weights, "torch")
    # The float graph exported again from other weights: the int8 graph beside it is stale and not served.
    export_onnx(tiny_model(seed=7), TINY, float_graph)
    assert resolve_model(Settings(model=weights, backend="onnx", **on_cpu)) == (float_graph, "onnx")
    int8_graph.write_bytes(b"not onnx")
    assert resolve_model(Settings(model=weights, backend="onnx", **on_cpu)) == (float_graph, "onnx")


def test_the_model_endpoint_says_how_the_served_graph_was_quantized(model_folder: Path, tmp_path: Path) -> None:
    weights = model_folder / "tiny.pt"
    settings = Settings(
        model=weights, backend="onnx", rig=DEFAULT_RIG, rigs_dir=tmp_path / "rigs", demo_frames=1, log_level="warning"
    )
    with running_server(settings) as live:
        info = httpx.get(live.url("/v1/model")).json()
    assert info["file"] == "tiny-int8.onnx" and info["backend"] == "onnxruntime-cpu"
    assert info["quantization"]["source"] == "tiny.onnx" and info["quantization"]["format"] == "qdq"
