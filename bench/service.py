"""Benchmark: the service (REST and WebSocket on a real uvicorn) against the in-process pipeline, in one run.

What is timed, round robin on the same frame sets (``time_interleaved``: every method meets the same
machine load, so the ratios hold on a shared machine):
- in process: ``BevPipeline.run`` (decode, resize, segment, warp, PNG encode), built as the service builds it;
- REST: ``POST /v1/bev`` through ``BevClient`` (httpx, one keep-alive connection), JSON reply and PNG reply,
  from building the multipart body to the parsed reply;
- WebSocket ``/v1/stream``: one frame set in flight (send, wait for its grid), msgpack as the contract says.
Overheads are service time over in-process time: ``rest_overhead`` = REST JSON median / in-process median,
``ws_overhead`` = in-process frame sets per second / stream frame sets per second (with one in flight,
frame sets per second = 1000 / mean latency). The goal is at most 1.15.

The server is ``bev serve`` in a child process on a free 127.0.0.1 port, not uvicorn in a thread of this
process: each side then has its own interpreter (GIL, allocator, thread pools) as in deployment, so the
figure is the cost of the service (HTTP or WebSocket, multipart, the engine's queue hop, the reply) and
not contention with the bench's own threads. Both sides load the same model file on the same backend with
the same function (``load_segmenter``: ONNX Runtime with worker threads that sleep between runs, torch with
its default thread count) and the same pipeline settings (palette PNG encoder, pixel limit). The two
processes share the CPU; ONNX Runtime's default of spinning threads would let the idle side take cores
from the working one, which is why the sessions do not spin (``OnnxSegmenter``).

After timing, an untimed check: REST (JSON, PNG, raw) and the stream return the in-process grid.

Frames: ``--frame-sets`` rendered synthetic frame sets of the default rig (held-out worlds) as JPEG, at
``--scale`` of the calibrated size (the service accepts a whole-factor reduction), cycled.
Model: ``--model``, else the shipped ``models/enet-pruned.pt`` (ONNX Runtime on the ``.onnx`` beside it when
it exists and there is no CUDA, as ``bev serve`` chooses; ``--backend`` insists on one), else an untrained
stand-in written to a temporary file (the output says so; speed only).

Run from the repository root: ``.venv/bin/python -m bench.service [--repeat N] [--quick] [--backend auto|torch|onnx]
[--model PATH]``. It prints the ratios against the in-process baseline measured in the same run
(``rest_overhead``, ``ws_overhead``); the last line printed is one JSON object:
``{"bench": "service", "rest_overhead", "ws_overhead", ...}``.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import cv2
import httpx
import msgpack
import numpy as np
import torch
from websockets.sync.client import ClientConnection, connect

from bench.common import Timing, bench_parser, format_table, json_line, machine, time_interleaved
from bev_service.calib.rigfile import load_rig
from bev_service.client import BevClient, decode_grid_png
from bev_service.geometry.rig import Rig
from bev_service.runtime.pipeline import BevPipeline
from bev_service.runtime.segmenter import load_segmenter
from bev_service.service.settings import Settings
from bev_service.service.state import encode_grid, resolve_model
from bev_service.shipped import DEFAULT_RIG, PRUNED_MODEL
from bev_service.synth import iter_frame_sets

REPO = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 100_000
GOAL_OVERHEAD = 1.15
READY_TIMEOUT_S = 300.0
REPLY_MAX_BYTES = 16 << 20
TINY_INPUT_HW = (64, 96)
SERVER_MAX_IMAGE_PIXELS = int(
    Settings.model_fields["max_image_pixels"].default
)  # what the server runs with: no BEV_* passed  # the default rig's 2:3 aspect ratio

EncodedFrames = dict[str, bytes]  # one frame set as the API takes it: encoded image bytes by camera


# -- the model and the frames ----------------------------------------------------------------------


def standin_model(scratch: Path, *, quick: bool, ratio: float) -> tuple[Path, str]:
    """An untrained model written as ``.pt`` with its ``.onnx`` beside it (as the shipped model is):
    the default architecture pruned at ``ratio`` (the shipped model's cost), or with ``quick`` a tiny
    one that only exercises the plumbing."""
    from bev_service.runtime.model_config import ModelConfig
    from bev_service.runtime.weights import save_model
    from bev_service.training.export import export_onnx

    torch.manual_seed(0)
    if quick:
        config = ModelConfig(width=0.25, input_size_hw=TINY_INPUT_HW)
        model = config.build().eval()
        note = f"untrained tiny stand-in (width 0.25, input {TINY_INPUT_HW}; no shipped model; plumbing only)"
    else:
        from bev_service.training.prune import prune_network

        config = ModelConfig()
        model = config.build().eval()
        prune_network(model, config.input_size_hw, ratio=ratio, iterative_steps=1, after_step=lambda k: None)
        config = config.with_channels(model)
        note = f"untrained default architecture pruned at {ratio} (no shipped model; speed only)"
    path = scratch / "standin.pt"
    save_model(path, model, config, info={"note": note})
    export_onnx(model, config, path.with_suffix(".onnx"))
    return path, note


def choose_model(args: Any, scratch: Path) -> tuple[Path, str, str]:
    """(model file, backend, note): the file and backend ``bev serve --model M --backend B`` resolves to."""
    if args.model:
        source, note = Path(args.model), str(args.model)
    elif PRUNED_MODEL.is_file():
        source, note = PRUNED_MODEL, f"shipped {PRUNED_MODEL.relative_to(REPO)}"
    else:
        source, note = standin_model(scratch, quick=args.quick, ratio=args.ratio)
    path, backend = resolve_model(Settings(model=source, backend=args.backend, device=None))
    return path, backend, note


def frame_sets(rig: Rig, count: int, scale: float) -> list[EncodedFrames]:
    """``count`` rendered frame sets of the rig at ``scale`` of its image size, as the JPEG files a client sends."""
    return [dict(fs.jpeg) for _, _, fs in iter_frame_sets(rig, count=count, seed=HELD_OUT_SEED, scale=scale)]


# -- a real server ------------------------------------------------------------------------------------


def free_port() -> int:
    """A port free on 127.0.0.1 now. ``bev serve`` binds it itself, so another process may take it in
    between; ``ServerProcess.start`` then fails with the server's log."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``bev serve`` in a child process on a free loopback port: the service as a user starts it (its own
    interpreter, uvicorn's default settings, access log on). Inherited ``BEV_*`` variables are dropped so
    that the run depends only on the arguments; ``env`` adds settings (``{"BEV_QUEUE_SIZE": "4"}``), ``args`` flags
    (``["--engine", "ray", "--replicas", "2"]``)."""

    def __init__(
        self,
        model: Path,
        backend: str,
        scratch: Path,
        *,
        rig: Path = DEFAULT_RIG,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = scratch / f"server-{self.port}.log"
        self.command = [
            sys.executable, "-m", "bev_service.cli.main", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--model", str(model), "--backend", backend,
            "--rig", str(rig), "--rigs-dir", str(scratch / "rigs"), *args,
        ]  # fmt: skip
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BEV_")} | {"PYTHONUNBUFFERED": "1"} | (env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not started"
        return self.process.pid

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, *, log_line: str | None = None) -> float:
        """Seconds since ``start`` until ``/readyz`` said 200 (model loaded, tables built, warmed up), and the
        log holds ``log_line`` when given (``bev serve --engine ray`` says so once every replica is ready)."""
        assert self.process is not None, "the server is not started"
        began, deadline = time.monotonic(), time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=5.0, trust_env=False) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"bev serve exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    logged = log_line is None or log_line in self.log_path.read_text(errors="replace")
                    if logged and http.get("/readyz").status_code == 200:
                        return time.monotonic() - began
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        raise RuntimeError(f"bev serve was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGINT (a graceful shutdown: uvicorn's, or the Serve application's and its Ray's), then SIGKILL if it does
        not end within ``timeout_s``. The exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


@contextmanager
def running_server(
    model: Path, backend: str, scratch: Path, *, env: dict[str, str] | None = None, args: Sequence[str] = ()
) -> Iterator[ServerProcess]:
    server = ServerProcess(model, backend, scratch, env=env, args=args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def rest_client(server: ServerProcess, timeout_s: float = 60.0) -> BevClient:
    """The product's REST client on one keep-alive connection; an explicit transport keeps proxies
    named in the environment out of loopback traffic."""
    return BevClient(server.url, timeout_s=timeout_s, transport=httpx.HTTPTransport())


def stream_connect(server: ServerProcess) -> ClientConnection:
    """A blocking WebSocket to ``/v1/stream``: no compression (JPEG and PNG do not deflate), no proxy."""
    return connect(
        f"ws://127.0.0.1:{server.port}/v1/stream", compression=None, proxy=None, max_size=REPLY_MAX_BYTES, open_timeout=30
    )


def stream_round_trip(ws: ClientConnection, seq: int, frames: EncodedFrames, timeout_s: float = 60.0) -> dict[str, Any]:
    """Send one frame set and wait for its reply (one in flight); the reply map as msgpack gives it."""
    ws.send(msgpack.packb({"seq": seq, "stamp": time.time(), "images": frames}, use_bin_type=True))
    reply = msgpack.unpackb(ws.recv(timeout=timeout_s), raw=False)
    if not isinstance(reply, dict):
        raise RuntimeError(f"the stream replied with a {type(reply).__name__}, not a map")
    return reply


# -- the measurement ------------------------------------------------------------------------------


def cycled(frames: list[EncodedFrames], fn: Callable[[int, EncodedFrames], object]) -> Callable[[], None]:
    """A call that gives ``fn`` the next frame set (and its running number) each time."""
    counter = iter(range(10**9))

    def one() -> None:
        i = next(counter)
        fn(i, frames[i % len(frames)])

    return one


def check_grids(pipeline: BevPipeline, client: BevClient, ws: ClientConnection, frames: list[EncodedFrames]) -> dict[str, float]:
    """Untimed: for each frame set, the fraction of cells on which REST (JSON, PNG, raw) and the stream
    agree with the in-process grid; the worst frame set counts."""
    worst = 1.0
    for i, fs in enumerate(frames):
        expected = pipeline.run(fs).grid
        reply = client.bev(fs)
        stream = stream_round_trip(ws, 10**9 + i, fs)
        if "grid" not in stream:
            raise RuntimeError(f"the stream answered frame set {i} with an error: {stream.get('error')}")
        grids = [
            decode_grid_png(base64.b64decode(reply["grid"]["png_base64"])),
            decode_grid_png(client.bev(fs, format="png")),
            client.bev(fs, format="raw").cells,
            decode_grid_png(stream["grid"]),
        ]
        for grid in grids:
            worst = min(worst, float((grid == expected).mean()) if grid.shape == expected.shape else 0.0)
    return {"cells_agree": worst}


def time_methods(
    pipeline: BevPipeline, client: BevClient, ws: ClientConnection, frames: list[EncodedFrames], args: Any
) -> tuple[list[Timing], list[float]]:
    """In process, REST JSON, REST PNG and the stream, interleaved call by call; also the pipeline's own
    time the server reported in each REST JSON reply (its ``timing_ms`` total)."""
    server_ms: list[float] = []
    stream_errors: list[str] = []

    def stream_one(i: int, fs: EncodedFrames) -> None:
        reply = stream_round_trip(ws, i, fs)
        if "grid" not in reply:
            stream_errors.append(str(reply.get("error")))

    calls = {
        f"in-process {pipeline.segmenter.backend}": cycled(frames, lambda i, fs: pipeline.run(fs)),
        "REST json": cycled(frames, lambda i, fs: server_ms.append(client.bev(fs)["timing_ms"]["total"])),
        "REST png": cycled(frames, lambda i, fs: client.bev(fs, format="png")),
        "WebSocket 1 in flight": cycled(frames, stream_one),
    }
    timings = time_interleaved(calls, repeat=args.repeat, warmup=args.warmup)
    if stream_errors:
        raise RuntimeError(f"{len(stream_errors)} stream replies were errors, the first: {stream_errors[0]}")
    return timings, server_ms[-args.repeat :]


def overhead_figures(timings: list[Timing], server_ms: list[float]) -> dict[str, float]:
    """Service time over in-process time, and the latencies behind the ratios."""
    inproc, rest, rest_png, stream = timings
    inproc_fps, ws_fps = 1000.0 / inproc.mean_ms, 1000.0 / stream.mean_ms
    return {
        "rest_overhead": rest.median_ms / inproc.median_ms,
        "ws_overhead": inproc_fps / ws_fps,
        "rest_png_overhead": rest_png.median_ms / inproc.median_ms,
        "rest_p99_overhead": rest.p99_ms / inproc.p99_ms,
        "inprocess_median_ms": inproc.median_ms,
        "inprocess_p99_ms": inproc.p99_ms,
        "inprocess_fps": inproc_fps,
        "rest_median_ms": rest.median_ms,
        "rest_p99_ms": rest.p99_ms,
        "rest_png_median_ms": rest_png.median_ms,
        "rest_png_p99_ms": rest_png.p99_ms,
        "ws_median_ms": stream.median_ms,
        "ws_p99_ms": stream.p99_ms,
        "ws_fps": ws_fps,
        # the pipeline's own time inside the server (its timing_ms total): the rest of REST is the service's cost
        "server_pipeline_median_ms": float(np.median(server_ms)),
    }


def measure(args: Any, scratch: Path) -> tuple[list[Timing], dict[str, Any]]:
    """The server and the in-process pipeline on the same model and frames: timings and the JSON figures."""
    rig = load_rig(DEFAULT_RIG)
    model_path, backend, note = choose_model(args, scratch)
    # The server loads while the frames render and the in-process pipeline is built (both take seconds).
    with running_server(model_path, backend, scratch) as server, ExitStack() as stack:
        frames = frame_sets(rig, args.frame_sets, args.scale)
        segmenter = load_segmenter(model_path, backend=backend)  # as ServiceState loads it (no device: the default)
        pipeline = BevPipeline(rig, segmenter, encoder=encode_grid, max_pixels=SERVER_MAX_IMAGE_PIXELS)
        stack.callback(pipeline.close)
        server.wait_ready()
        client = stack.enter_context(rest_client(server))
        ws = stack.enter_context(stream_connect(server))
        timings, server_ms = time_methods(pipeline, client, ws, frames, args)
        agreement = check_grids(pipeline, client, ws, frames)
        served = client.model()
    figures: dict[str, Any] = {
        **overhead_figures(timings, server_ms),
        **agreement,
        "backend": segmenter.backend,
        "served_backend": served.get("backend"),
        "model": note,
        "model_file": model_path.name,
        "server": "bev serve subprocess (uvicorn) on 127.0.0.1",
        "frame_sets": len(frames),
        "frame_size_hw": list(jpeg_size_hw(frames[0])),
        "input_size_hw": list(segmenter.input_size_hw),
        "torch_threads": torch.get_num_threads(),
        "repeat": args.repeat,
        "machine": machine(),
    }
    return timings, figures


def jpeg_size_hw(frames: EncodedFrames) -> tuple[int, int]:
    """(height, width) of the first image of a frame set."""
    image = cv2.imdecode(np.frombuffer(next(iter(frames.values())), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the rendered JPEG does not decode"
    return int(image.shape[0]), int(image.shape[1])


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__.splitlines()[0] if __doc__ else "service bench", default_repeat=100)
    parser.add_argument("--model", help="model file (.pt or .onnx); default: the shipped model, else an untrained stand-in")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"), help="as bev serve --backend")
    parser.add_argument("--frame-sets", type=int, default=4, help="distinct frame sets, cycled (default 4)")
    parser.add_argument("--scale", type=float, default=1.0, help="rendered size over the calibrated size (default 1)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls of each method first (default 10)")
    parser.add_argument("--ratio", type=float, default=0.4, help="pruning ratio of the untrained stand-in model")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.warmup = min(args.repeat, 5), min(args.warmup, 2)
        args.frame_sets, args.scale = min(args.frame_sets, 2), min(args.scale, 0.25)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as scratch:
        timings, figures = measure(args, Path(scratch))
    print(format_table(timings))
    print(
        f"service time / in-process time: REST json {figures['rest_overhead']:.3f}, REST png {figures['rest_png_overhead']:.3f}, "
        f"stream {figures['ws_overhead']:.3f} ({figures['ws_fps']:.1f} vs {figures['inprocess_fps']:.1f} frame sets/s); "
        f"goal at most {GOAL_OVERHEAD}"
    )
    print(
        f"pipeline time inside the server (median): {figures['server_pipeline_median_ms']:.1f} ms; "
        f"cells agreeing with the in-process grid: {figures['cells_agree']:.4f}"
    )
    print(f"model: {figures['model']} on {figures['backend']}; server: {figures['server']}; machine: {figures['machine']}")
    print(json_line("service", figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
