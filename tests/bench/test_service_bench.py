"""The service benches (bench/service.py, bench/load.py) in quick mode on a tiny model, each against its
own real ``bev serve`` child process: the closing JSON lines carry their figures, the service answers
with the in-process grid, and the load bench's counts add up with the server's own. Timings are not
asserted (the machine is shared)."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any

import pytest

from bench import load, service
from bench.common import parse_json_line
from bev_service.runtime.weights import save_model
from bev_service.training.export import export_onnx
from tests.networks import TINY, tiny_model

pytestmark = pytest.mark.slow

SERVICE_KEYS = (
    "rest_overhead",
    "ws_overhead",
    "rest_png_overhead",
    "inprocess_median_ms",
    "inprocess_p99_ms",
    "inprocess_fps",
    "rest_median_ms",
    "rest_p99_ms",
    "rest_png_median_ms",
    "rest_png_p99_ms",
    "ws_median_ms",
    "ws_p99_ms",
    "ws_fps",
    "server_pipeline_median_ms",
)
LOAD_KEYS = (
    "errors",
    "rss_growth",
    "p99_ms",
    "p50_ms",
    "ok",
    "declared_503",
    "server_rejections",
    "rss_start_mib",
    "rss_end_mib",
)


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained network as ``tiny.pt`` with ``tiny.onnx`` beside it, as the shipped model comes."""
    folder = tmp_path_factory.mktemp("model")
    model = tiny_model()
    save_model(folder / "tiny.pt", model, TINY)
    export_onnx(model, TINY, folder / "tiny.onnx")
    return folder / "tiny.pt"


def run_main(main: Any, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def service_output(tiny_model_file: Path) -> str:
    return run_main(service.main, ["--quick", "--repeat", "3", "--model", str(tiny_model_file)])


@pytest.fixture(scope="module")
def load_output(tiny_model_file: Path) -> str:
    # A queue of one frame set makes the service refuse some requests with 503, so that path is counted too.
    return run_main(load.main, ["--quick", "--model", str(tiny_model_file), "--queue-size", "1"])


def test_service_json_line_carries_the_overheads(service_output: str) -> None:
    figures = parse_json_line(service_output)
    assert service_output.rstrip("\n").splitlines()[-1].startswith('{"bench": "service"')
    for key in SERVICE_KEYS:
        assert isinstance(figures[key], float) and math.isfinite(figures[key]) and figures[key] > 0, key
    assert figures["rest_overhead"] == pytest.approx(figures["rest_median_ms"] / figures["inprocess_median_ms"], rel=1e-2)
    assert figures["ws_overhead"] == pytest.approx(figures["inprocess_fps"] / figures["ws_fps"], rel=1e-2)
    assert figures["repeat"] == 3 and figures["frame_sets"] == 2


def test_service_and_in_process_run_the_same_model_on_the_same_backend(service_output: str) -> None:
    figures = parse_json_line(service_output)
    # auto picks ONNX Runtime on the .onnx beside the .pt without CUDA, torch on CUDA: both sides alike
    assert figures["backend"] == figures["served_backend"]
    assert figures["model_file"] in ("tiny.onnx", "tiny.pt")
    assert figures["input_size_hw"] == list(TINY.input_size_hw)


def test_service_answers_with_the_in_process_grid(service_output: str) -> None:
    # REST JSON, PNG and raw and the stream, cell for cell: same model, same backend, same frames
    assert parse_json_line(service_output)["cells_agree"] == 1.0


def test_service_table_names_every_method(service_output: str) -> None:
    for name in ("in-process", "REST json", "REST png", "WebSocket 1 in flight"):
        assert name in service_output


def test_load_json_line_counts_no_error(load_output: str) -> None:
    figures = parse_json_line(load_output)
    assert load_output.rstrip("\n").splitlines()[-1].startswith('{"bench": "load"')
    for key in LOAD_KEYS:
        assert key in figures, key
    assert figures["errors"] == 0, figures["error_samples"]
    assert figures["ok"] > 0 and figures["rest_ok"] > 0 and figures["stream_ok"] > 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert math.isfinite(figures["rss_growth"]) and figures["rss_start_mib"] > 0


def test_load_declared_503s_match_the_server_count(load_output: str) -> None:
    figures = parse_json_line(load_output)
    assert figures["queue_size"] == 1
    # Each client has one request in flight, so the counting windows of client and server differ by at
    # most one request per client.
    assert abs(figures["declared_503"] - figures["server_rejections"]) <= figures["clients"]
