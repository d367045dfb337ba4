"""bench/model.py and bench/pipeline.py in quick mode: they run and close with the JSON line the
issue asks for. Timings are not asserted (the machine is shared); sizes and bytes are."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from bench import model as model_bench
from bench import pipeline as pipeline_bench
from bench.common import parse_json_line


def run(main: object, argv: list[str]) -> tuple[str, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0  # type: ignore[operator]
    return out.getvalue(), parse_json_line(out.getvalue())


def test_model_bench_compares_pruned_with_unpruned() -> None:
    _, figures = run(
        model_bench.main, ["--untrained", "--quick", "--no-onnx", "--width", "0.5", "--size", "96x64", "--ratio", "0.5"]
    )
    assert figures["bench"] == "model"
    for key in ("macs_ratio", "cpu_speedup", "miou_drop", "ort_speedup"):
        assert key in figures
    assert figures["macs_ratio"] > 1.5 and figures["params"]["pruned"] < figures["params"]["unpruned"]
    assert figures["trained"] is False and figures["miou_drop"] is None and figures["input_size_hw"] == [64, 96]


def test_model_bench_times_the_pruned_network_as_an_int8_graph_beside_its_float_graph() -> None:
    args = ["--untrained", "--quick", "--width", "0.25", "--size", "96x64", "--ratio", "0.5", "--repeat", "2"]
    text, figures = run(model_bench.main, args)
    assert {"onnxruntime pruned", "onnxruntime pruned int8"} <= set(figures["latency_ms"]) and "pruned int8" in text
    assert figures["ort_int8_speedup"] > 0 and figures["int8_speedup"] > 0
    record = figures["int8_quantization"]  # quantized in the run: nothing shipped for an untrained network
    assert record["calibration_data"] == "synth data set 0, frame sets 0-0" and record["calibration_images"] == 4


def test_pipeline_bench_hands_back_only_the_grid() -> None:
    text, figures = run(pipeline_bench.main, ["--quick", "--backend", "torch", "--repeat", "2"])
    assert figures["bench"] == "pipeline" and figures["backend"] == "torch-cpu"
    assert figures["device_to_host_bytes"] == figures["grid_bytes"] == 400 * 400
    assert set(figures["stages_ms"]) == {"decode", "resize", "segment", "warp", "to_host", "encode", "total"}
    assert 0 < figures["median_ms"] <= figures["p99_ms"] and figures["frame_size_hw"] == [640, 960]
    assert "stages (median ms)" in text


def test_pipeline_bench_on_onnx_runtime_times_the_spinning_default_beside_it(tiny_onnx: Path) -> None:
    text, figures = run(pipeline_bench.main, ["--quick", "--model", str(tiny_onnx), "--repeat", "2"])
    assert figures["backend"] == "onnxruntime-cpu" and figures["input_size_hw"] == [64, 96]
    assert figures["baseline_median_ms"] > 0 and figures["speedup_vs_spinning"] > 0
    assert "baseline: ONNX Runtime default (spinning threads)" in text
    # ONNX Runtime hands the four label maps to the host; the warp runs there.
    assert figures["device_to_host_bytes"] == 4 * 64 * 96
