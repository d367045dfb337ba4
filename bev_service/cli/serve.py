"""``bev serve``: the service on uvicorn (flags override the ``BEV_*`` environment variables).

bev serve                          # 127.0.0.1:8000, shipped model, default rig, viewer at /
BEV_API_TOKEN=secret bev serve --host 0.0.0.0 --port 8000
BEV_MAX_CONNECTIONS=1024 BEV_TIMEOUT_HEADERS_S=5 bev serve   # connection limits: see Settings
bev serve --foxglove-port 8765     # and a live view for Foxglove / Lichtblick on ws://127.0.0.1:8765
bev serve --engine ray --replicas 2                      # two replicas behind Ray Serve's proxy, a local Ray
bev serve --engine ray --address auto --min-replicas 1 --max-replicas 8   # autoscaling on a running cluster

The uvicorn configuration (limits, timeouts, the token kept out of the access log) is
``bev_service.service.server.uvicorn_config``, which the tests run the service with too.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from bev_service.errors import ModelError

STARTUP_FAILURE = 3  # uvicorn's exit status when the server did not start (the port is taken, the app failed)


def register(commands: Any) -> None:
    p = commands.add_parser(
        "serve",
        help="serve the REST API, the WebSocket stream and the viewer",
        description="Serve the BEV service with uvicorn. Every flag overrides its BEV_* environment variable "
        "(BEV_HOST, BEV_PORT, BEV_MODEL, BEV_BACKEND, BEV_RIG, BEV_RIGS_DIR, BEV_FOXGLOVE_PORT, BEV_FOXGLOVE_HOST; "
        "BEV_API_TOKEN only from the environment).",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument(
        "--model",
        type=Path,
        help="model weights (default: the shipped pruned network; on a CPU the service serves its int8 graph, see BEV_INT8)",
    )
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], help="inference backend (default auto)")
    p.add_argument("--device", help="torch device for the torch backend (cpu, cuda)")
    p.add_argument("--rig", type=Path, help="default rig file (default: the shipped default rig)")
    p.add_argument("--rigs-dir", type=Path, help="where PUT /v1/rigs stores rigs (default build/rigs)")
    p.add_argument(
        "--input-pixels",
        type=int,
        help="pixels each camera runs through the network at, in its own aspect ratio (default: the model's training size)",
    )
    p.add_argument(
        "--foxglove-port",
        type=int,
        help="also serve a Foxglove WebSocket server on this port: the cameras and the grid live (default: none)",
    )
    p.add_argument("--foxglove-host", help="address the Foxglove server listens on (default 127.0.0.1)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="uvicorn log level")
    fleet = p.add_argument_group(
        "serving on Ray Serve (--engine ray)",
        "The same app as replicas behind Serve's HTTP proxy on --host:--port; every replica reads and writes --rigs-dir, "
        'which must be one folder all of them see (README, "Serving many vehicles").',
    )
    fleet.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="local: this process on uvicorn (default); ray: Ray Serve"
    )
    fleet.add_argument("--replicas", type=int, default=2, help="replicas, each with its own model (default 2)")
    fleet.add_argument("--min-replicas", type=int, help="autoscale between --min-replicas and --max-replicas instead")
    fleet.add_argument("--max-replicas", type=int, help="the most replicas autoscaling starts")
    fleet.add_argument("--address", help="a running Ray cluster (auto, host:6379); default: a local Ray for this command")
    fleet.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs each replica reserves (default 1)")
    fleet.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs each replica reserves (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from bev_service.service.app import create_app
    from bev_service.service.server import uvicorn_config
    from bev_service.service.settings import Settings
    from bev_service.service.state import resolve_model

    overrides = {
        k: v
        for k in (
            "host",
            "port",
            "model",
            "backend",
            "device",
            "rig",
            "rigs_dir",
            "input_pixels",
            "foxglove_port",
            "foxglove_host",
            "log_level",
        )
        if (v := getattr(args, k)) is not None
    }
    settings = Settings(**overrides)
    path, backend = resolve_model(settings)  # a missing model fails here, before the port opens
    if not Path(settings.rig).is_file():
        raise ModelError(f"rig file {settings.rig} does not exist (set --rig or BEV_RIG)")
    if args.engine == "ray":
        return run_on_ray(args, settings, f"model {path} on {backend}")
    app = create_app(settings)
    state = app.state.bev
    state.start_foxglove()  # a taken Foxglove port fails here (FoxgloveStartError), before the HTTP port opens
    print(f"bev serve: http://{settings.host}:{settings.port}/ (viewer), model {path} on {backend}", flush=True)
    if state.foxglove is not None:
        print(f"bev serve: Foxglove live view on ws://{settings.foxglove_host}:{state.foxglove.port}", flush=True)
    server = uvicorn.Server(uvicorn_config(app, settings))
    # After a graceful shutdown on Ctrl+C, uvicorn raises the signal again, as uvicorn.run expects.
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
    finally:
        if not server.started and state.foxglove is not None:
            state.foxglove.close()  # the lifespan that would have closed it never ran
    return 0 if server.started else STARTUP_FAILURE


def run_on_ray(args: argparse.Namespace, settings: Any, model: str) -> int:
    from bev_service.service.ray_serve import FleetError, FleetOptions, serve_fleet

    if settings.foxglove_port is not None:
        raise FleetError("--foxglove-port runs with --engine local only (one live view per process)")
    options = FleetOptions(
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        address=args.address,
        replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus,
    )
    replicas = (
        f"{options.min_replicas}-{options.max_replicas} replicas" if options.autoscaling else f"{options.replicas} replicas"
    )

    def ready(seconds: float) -> None:
        print(
            f"bev serve: http://{settings.host}:{settings.port}/ (viewer) on Ray Serve, {replicas}, {model}, "
            f"rigs in {Path(settings.rigs_dir).resolve()} (ready in {seconds:.1f} s)",
            flush=True,
        )

    serve_fleet(settings, options, on_ready=ready)
    return 0
