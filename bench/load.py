"""Benchmark: concurrent clients against a real server for a while: no error but declared 503s, resident
memory that does not grow, the latency they meet.

``--clients`` clients (default 8: ``--stream-clients`` of them, default 2, on the WebSocket stream, the
others on REST) run for ``--duration`` seconds (default 60) against ``bev serve`` in a child process on a
free 127.0.0.1 port (see bench/service.py for the server, the model and the frames). Each client is a
thread with one request in flight: a REST client posts frame sets through ``BevClient`` (its own
keep-alive connection), asking in turn for the JSON, PNG and raw replies and checking each; a stream
client sends a frame set and waits for its grid. A ``--warmup-s`` phase of the same load comes first.

Counted after the warm-up: ``ok`` (a 200 with a well-formed grid, a stream reply with a grid),
``declared_503`` (a 503 whose Retry-After header parses; on the stream an ``overloaded`` error reply with
``retry_after_s``); ``errors`` is everything else over the whole run, warm-up included (other statuses, a
503 without Retry-After, malformed replies, transport failures, closed streams). After a declared 503 a
client waits ``--backoff-ms`` (default 50 ms), not the whole Retry-After, so that the server stays under
pressure. Latency (``p50_ms``, ``p99_ms``) is that of the ok replies as the clients see them.
Memory: the server process's RSS (psutil) when the warm-up ends and when the run ends, both under load;
``rss_growth`` = end / start - 1. The server's own rejection counter (``/metrics``) is read back to check
the 503 count.

Memory is that of the server's process tree (for Ray Serve: the driver, Ray's own processes and the replicas).

``--replicas N``: after the one process, the same load, frames and model through ``bev serve --engine ray
--replicas N`` (Serve's proxy on a free port, a local Ray), in the same run; the ratios ``serve_throughput_ratio``
(ok replies per second through Serve over the one process's) and ``serve_p99_ratio`` compare the two.

Run from the repository root: ``.venv/bin/python -m bench.load [--duration S] [--clients N] [--replicas N] [--quick]``.
Its ratios are the server's memory at the end over that after the warm-up (``rss_growth``) and, with
``--replicas``, Serve over one process, both measured in the same run. The last line printed is one JSON object:
``{"bench": "load", "errors", "rss_growth", "p99_ms", "ok", "declared_503", ..., "serve": {...}}``.
"""

from __future__ import annotations

import base64
import contextlib
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from websockets.exceptions import WebSocketException

from bench.common import json_line, machine
from bench.service import (
    EncodedFrames,
    ServerProcess,
    choose_model,
    frame_sets,
    rest_client,
    running_server,
    stream_connect,
    stream_round_trip,
)
from bev_service.calib.rigfile import load_rig
from bev_service.client import ServiceError, decode_grid_png
from bev_service.shipped import DEFAULT_RIG

GOAL_RSS_GROWTH = 0.10
FORMATS = ("json", "png", "raw")


@dataclass
class Tally:
    """What one client saw. Outcomes are counted only while ``counting`` is set (after the warm-up);
    errors always."""

    kind: str
    latency_ms: list[float] = field(default_factory=list)
    declared_503: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(f"{self.kind}: {message}"[:300])


class Run:
    """The clock and flags the client threads share."""

    def __init__(self, backoff_s: float) -> None:
        self.stop = threading.Event()
        self.counting = threading.Event()
        self.backoff_s = backoff_s


def check_reply(format: str, reply: Any) -> None:
    """Raise ValueError unless a REST reply holds a grid of the expected form."""
    if format == "json":
        grid = decode_grid_png(base64.b64decode(reply["grid"]["png_base64"]))
        if grid.shape != (reply["grid"]["rows"], reply["grid"]["cols"]):
            raise ValueError(f"JSON grid {grid.shape} is not rows x cols {reply['grid']['rows']} x {reply['grid']['cols']}")
    elif format == "png":
        decode_grid_png(reply)
    elif reply.cells.ndim != 2 or reply.cells.size == 0:
        raise ValueError(f"raw grid of shape {reply.cells.shape}")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def rest_client_loop(server: ServerProcess, frames: list[EncodedFrames], run: Run, tally: Tally, offset: int) -> None:
    i = offset
    with rest_client(server, timeout_s=30.0) as client:
        while not run.stop.is_set():
            counting, fmt = run.counting.is_set(), FORMATS[i % len(FORMATS)]
            began = time.perf_counter()
            try:
                reply = client.bev(frames[i % len(frames)], format=fmt)  # type: ignore[call-overload]
                check_reply(fmt, reply)
            except ServiceError as exc:
                if exc.status == 503 and exc.retry_after_s is not None:
                    if counting:
                        tally.declared_503 += 1
                    run.stop.wait(run.backoff_s)
                else:
                    tally.error(f"{exc.status} {exc.error}: {exc.detail}")
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                tally.error(f"{type(exc).__name__}: {exc}")
                run.stop.wait(run.backoff_s)
            else:
                if counting:
                    tally.latency_ms.append((time.perf_counter() - began) * 1000.0)
            i += 1


def stream_client_loop(server: ServerProcess, frames: list[EncodedFrames], run: Run, tally: Tally, offset: int) -> None:
    i = offset
    while not run.stop.is_set():
        try:
            with stream_connect(server) as ws:
                while not run.stop.is_set():
                    counting = run.counting.is_set()
                    began = time.perf_counter()
                    reply = stream_round_trip(ws, i, frames[i % len(frames)], timeout_s=30.0)
                    i += 1
                    if reply.get("seq") != i - 1:
                        tally.error(f"reply to frame set {i - 1} carries seq {reply.get('seq')!r}")
                    elif "grid" in reply:
                        decode_grid_png(reply["grid"])
                        if counting:
                            tally.latency_ms.append((time.perf_counter() - began) * 1000.0)
                    elif str(reply.get("error", "")).startswith("overloaded") and "retry_after_s" in reply:
                        if counting:
                            tally.declared_503 += 1
                        run.stop.wait(run.backoff_s)
                    else:
                        tally.error(f"error reply: {reply.get('error')!r}")
        except (WebSocketException, OSError, TimeoutError, ValueError, RuntimeError) as exc:
            tally.error(f"{type(exc).__name__}: {exc}")
            run.stop.wait(run.backoff_s)


def rejected_by_server(server: ServerProcess) -> int:
    """The server's count of 503 rejections (``bev_overload_rejections_total`` on /metrics)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10.0, trust_env=False).text
    match = re.search(r"^bev_overload_rejections_total\s+(\S+)$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("/metrics has no bev_overload_rejections_total")
    return round(float(match.group(1)))


def tree_rss(pid: int) -> int:
    """Resident bytes of the server: its process and every process under it (Ray's raylet, proxy and replicas
    for ``--engine ray``; none for one process). A process that ends while it is read counts nothing."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile, or None (JSON null) when there is nothing to rank."""
    return float(np.percentile(values, q)) if values else None


def run_load(
    args: Any, server: ServerProcess, frames: list[EncodedFrames], *, per_replica_metrics: bool = False
) -> dict[str, Any]:
    """The load for ``--warmup-s`` then ``--duration`` seconds. Behind Ray Serve each replica has its own
    ``/metrics`` and the proxy shows one of them: the server's rejection count is then not read (None)."""
    run = Run(backoff_s=args.backoff_ms / 1000.0)
    streams = min(args.stream_clients, args.clients)
    tallies = [Tally("stream" if k < streams else "rest") for k in range(args.clients)]
    loops: dict[str, Callable[[ServerProcess, list[EncodedFrames], Run, Tally, int], None]] = {
        "stream": stream_client_loop,
        "rest": rest_client_loop,
    }
    threads = [
        threading.Thread(target=loops[t.kind], args=(server, frames, run, t, k), name=f"load-{t.kind}-{k}", daemon=True)
        for k, t in enumerate(tallies)
    ]
    for thread in threads:
        thread.start()
    time.sleep(args.warmup_s)
    rejected_before = 0 if per_replica_metrics else rejected_by_server(server)
    rss_start = tree_rss(server.pid)
    run.counting.set()
    began = time.perf_counter()
    rss_max = rss_start
    while (left := args.duration - (time.perf_counter() - began)) > 0:
        time.sleep(min(1.0, left))
        rss_max = max(rss_max, tree_rss(server.pid))
    rss_end = tree_rss(server.pid)
    run.counting.clear()
    elapsed_s = time.perf_counter() - began
    run.stop.set()
    for thread in threads:
        thread.join(timeout=60)
    rejected = None if per_replica_metrics else rejected_by_server(server) - rejected_before
    ok = [ms for t in tallies for ms in t.latency_ms]
    rest_ok = [ms for t in tallies if t.kind == "rest" for ms in t.latency_ms]
    stream_ok = [ms for t in tallies if t.kind == "stream" for ms in t.latency_ms]
    return {
        "errors": sum(t.errors for t in tallies),
        "rss_growth": rss_end / rss_start - 1.0,
        "p99_ms": percentile(ok, 99),
        "p50_ms": percentile(ok, 50),
        "ok": len(ok),
        "declared_503": sum(t.declared_503 for t in tallies),
        "server_rejections": rejected,
        "ok_per_s": len(ok) / elapsed_s,
        "rest_ok": len(rest_ok),
        "rest_p50_ms": percentile(rest_ok, 50),
        "rest_p99_ms": percentile(rest_ok, 99),
        "stream_ok": len(stream_ok),
        "stream_p50_ms": percentile(stream_ok, 50),
        "stream_p99_ms": percentile(stream_ok, 99),
        "rss_start_mib": rss_start / 2**20,
        "rss_end_mib": rss_end / 2**20,
        "rss_max_mib": rss_max / 2**20,
        "error_samples": [s for t in tallies for s in t.error_samples][:5],
        "clients": args.clients,
        "stream_clients": streams,
        "duration_s": elapsed_s,
        "warmup_s": args.warmup_s,
    }


def main(argv: list[str] | None = None) -> int:
    from argparse import ArgumentParser

    parser = ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "load bench")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 clients for 3 s on a tiny model and small frames")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load (default 60)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--stream-clients", type=int, default=2, help="of them, clients on the WebSocket stream (default 2)")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="seconds of the same load before measuring (default 5)")
    parser.add_argument("--backoff-ms", type=float, default=50.0, help="wait after a declared 503 (default 50)")
    parser.add_argument("--queue-size", type=int, help="the server's BEV_QUEUE_SIZE (default: the service's own)")
    parser.add_argument("--model", help="model file (.pt or .onnx); default: the shipped model, else an untrained stand-in")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"), help="as bev serve --backend")
    parser.add_argument("--frame-sets", type=int, default=4, help="distinct frame sets, cycled (default 4)")
    parser.add_argument("--scale", type=float, default=1.0, help="rendered size over the calibrated size (default 1)")
    parser.add_argument("--ratio", type=float, default=0.4, help="pruning ratio of the untrained stand-in model")
    parser.add_argument(
        "--replicas", type=int, default=0, help="also the same load through Ray Serve with this many replicas (default: none)"
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients must be at least 1 and --duration positive")
    if args.quick:
        args.duration, args.warmup_s = min(args.duration, 3.0), min(args.warmup_s, 1.0)
        args.clients, args.stream_clients = min(args.clients, 3), min(args.stream_clients, 1)
        args.frame_sets, args.scale = min(args.frame_sets, 2), min(args.scale, 0.25)
    env = {"BEV_QUEUE_SIZE": str(args.queue_size)} if args.queue_size else {}
    rig = load_rig(DEFAULT_RIG)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
        model_path, backend, note = choose_model(args, Path(scratch))
        frames = frame_sets(rig, args.frame_sets, args.scale)
        single = measure(args, model_path, backend, Path(scratch) / "single", frames, env=env)
        single |= {"model": note, "queue_size": args.queue_size or "default", "machine": machine()}
        report("one process", single, note)
        figures = single
        if args.replicas:
            serve_args = ["--engine", "ray", "--replicas", str(args.replicas)]
            fleet = measure(args, model_path, backend, Path(scratch) / "fleet", frames, env=env, serve_args=serve_args)
            report(f"Ray Serve, {args.replicas} replicas", fleet, note)
            figures = single | {
                "replicas": args.replicas,
                "serve": {k: v for k, v in fleet.items() if k not in ("machine", "model", "queue_size")},
                "serve_throughput_ratio": fleet["ok_per_s"] / single["ok_per_s"] if single["ok_per_s"] else None,
                "serve_p99_ratio": fleet["p99_ms"] / single["p99_ms"] if fleet["p99_ms"] and single["p99_ms"] else None,
            }
            print(
                f"Ray Serve with {args.replicas} replicas against one process, same run: throughput "
                f"{_ratio(figures['serve_throughput_ratio'])}, p99 latency {_ratio(figures['serve_p99_ratio'])}"
            )
    print(json_line("load", figures))
    return 0


def measure(
    args: Any,
    model: Path,
    backend: str,
    scratch: Path,
    frames: list[EncodedFrames],
    *,
    env: dict[str, str],
    serve_args: list[str] | None = None,
) -> dict[str, Any]:
    """One server (``bev serve``, or ``bev serve --engine ray ...`` with ``serve_args``) under the load."""
    scratch.mkdir(parents=True, exist_ok=True)
    fleet = serve_args is not None
    with running_server(model, backend, scratch, env=env, args=serve_args or ()) as server:
        server.wait_ready(log_line="on Ray Serve" if fleet else None)
        with rest_client(server) as client:
            served = client.model()
        figures = run_load(args, server, frames, per_replica_metrics=fleet)
    return figures | {"backend": served.get("backend", backend)}


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def report(title: str, figures: dict[str, Any], note: str) -> None:
    print(
        f"{title}: {figures['clients']} clients ({figures['stream_clients']} streaming) for {figures['duration_s']:.0f} s: "
        f"{figures['ok']} ok ({figures['ok_per_s']:.1f}/s), {figures['declared_503']} declared 503 "
        f"(the server counted {figures['server_rejections'] if figures['server_rejections'] is not None else 'n/a'}), "
        f"{figures['errors']} errors"
    )
    print(
        f"  latency of ok replies: p50 {_ms(figures['p50_ms'])}, p99 {_ms(figures['p99_ms'])} "
        f"(REST p99 {_ms(figures['rest_p99_ms'])}, stream p99 {_ms(figures['stream_p99_ms'])})"
    )
    print(
        f"  server RSS: {figures['rss_start_mib']:.1f} MiB after warm-up, {figures['rss_end_mib']:.1f} MiB at the end "
        f"(growth {100 * figures['rss_growth']:+.1f}%, goal under {100 * GOAL_RSS_GROWTH:.0f}%), "
        f"max {figures['rss_max_mib']:.1f} MiB"
    )
    for sample in figures["error_samples"]:
        print(f"  error: {sample}")
    print(f"  model: {note} on {figures['backend']}; machine: {machine()}")


if __name__ == "__main__":
    sys.exit(main())
