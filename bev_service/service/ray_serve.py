"""``bev serve --engine ray``: the service's own FastAPI app, deployed as replicas on Ray Serve.

    clients ──> Serve's HTTP proxy (host:port) ──> replica 1 … N, each in its own process on any node
                REST and the WebSocket stream       create_app(settings): one model, its engine's batching
                                                     rigs_dir shared by all (shared_rigs_dir)

Each replica is the app ``bev serve`` runs in one process, unchanged: the same routes, errors, limits, queue and
batching. Serve's proxy picks a replica per request (a WebSocket stays on the replica it opened on). A replica
takes traffic only once it is ready (model loaded, the default rig's tables built, warmed up): Serve's initial
health check waits for ``/readyz``'s condition. A replica that dies is replaced by Serve's controller; the
requests in flight on it fail (the proxy answers 500), the others go to the live replicas.

Rigs: every replica reads and writes one ``rigs_dir`` (a folder on shared storage; on one machine, any folder):
a PUT stores the file under a lock and each replica re-reads the folder when it changed, before it answers, so
a rig PUT on one replica is served by every replica from the next request on.

Every reply says which replica answered in ``X-Bev-Instance`` (``<replica id>@<host>:<pid>``). ``/metrics`` is the
replica that answered; ``/metrics/fleet`` on any replica is every live replica's, each sample labelled with its
replica: each pushes its metrics every ``REPORT_PERIOD_S`` to one actor of the command's (``MetricsHub``), which
forgets a replica silent for ``STALE_AFTER_S``. Ray and Serve are imported only when this engine runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bev_service.errors import BevError
from bev_service.runtime.ray_env import ray_environment
from bev_service.service.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "bev"
READY_TIMEOUT_S = 300.0  # a replica's model load, tables and warm-up, on a busy machine
HEALTH_PERIOD_S = 5.0
# Requests a replica holds at once beyond its own queue: probes and rig reads, which never wait for the network.
SPARE_ONGOING = 8


HUB_NAME, HUB_NAMESPACE = "bev-metrics-hub", "bev"
REPORT_PERIOD_S = 2.0  # how often a replica pushes its metrics to the hub
STALE_AFTER_S = 10.0  # a replica that has not reported for this long (dead, or its node lost) leaves /metrics/fleet


class FleetError(BevError):
    """Ray Serve could not run the service as asked (no cluster at the address, bad replica counts)."""


@dataclass(frozen=True)
class FleetOptions:
    """How many replicas, where, and what each reserves. ``min_replicas``/``max_replicas`` turn on Serve's
    autoscaling (between them, on ongoing requests per replica); otherwise ``replicas`` fixed."""

    replicas: int = 2
    min_replicas: int | None = None
    max_replicas: int | None = None
    address: str | None = None  # an existing Ray cluster ("auto", "host:6379"); None: a local one for this run
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    target_ongoing_requests: float = 2.0  # autoscaling aims at this many requests in flight per replica

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise FleetError(f"--replicas must be at least 1, got {self.replicas}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise FleetError("autoscaling needs both --min-replicas and --max-replicas")
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and (not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1)
        ):
            raise FleetError(
                f"expected 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1, "
                f"got {self.min_replicas} and {self.max_replicas}"
            )
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise FleetError("--replica-cpus and --replica-gpus must not be negative")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas


def replica_settings(settings: Settings) -> dict[str, Any]:
    """The fields each replica's ``Settings`` is made of: every path absolute (replicas run in other working
    folders, and on other nodes read the same paths), the rigs folder shared. Passed explicitly, so that a
    replica's own ``BEV_*`` environment cannot change what the fleet serves."""
    fields = settings.model_dump()
    for name in ("model", "rig", "rigs_dir"):
        fields[name] = Path(fields[name]).resolve()
    fields["shared_rigs_dir"] = True
    fields["proxy_sets_request_id"] = True  # Serve's proxy gives each request its X-Request-ID, and the reply
    fields["foxglove_port"] = None  # one live view per process, and N replicas cannot share a port
    return fields


def max_ongoing_requests(settings: Settings) -> int:
    """What Serve lets one replica hold: its streams (a WebSocket is one ongoing request for its whole life),
    its queue and batch, and probes, so that the replica's own admission control answers an overload (503 with
    Retry-After, the stream's ``overloaded``) rather than Serve's proxy queueing without bound."""
    return settings.max_streams + settings.queue_size + settings.max_batch + SPARE_ONGOING


def instance_name(replica_id: str) -> str:
    return f"{replica_id}@{socket.gethostname()}:{os.getpid()}"


class MetricsHub:
    """A Ray actor the command owns: the latest ``/metrics`` text of every replica, as each pushes it."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[float, bytes]] = {}

    def report(self, replica: str, text: bytes) -> None:
        self._latest[replica] = (time.monotonic(), text)

    def forget(self, replica: str) -> None:
        self._latest.pop(replica, None)

    def texts(self, max_age_s: float) -> dict[str, bytes]:
        """What every replica heard from within ``max_age_s`` last reported; the others are forgotten."""
        now = time.monotonic()
        self._latest = {r: (at, text) for r, (at, text) in self._latest.items() if now - at <= max_age_s}
        return {r: text for r, (_, text) in self._latest.items()}


def start_hub() -> Any:
    """The fleet's ``MetricsHub`` (no CPU reserved), created by the command before its replicas and gone with it."""
    import ray

    hub = ray.remote(num_cpus=0)(MetricsHub)
    return hub.options(name=HUB_NAME, namespace=HUB_NAMESPACE, get_if_exists=True).remote()


class HubMetrics:
    """A replica's side of the hub (``ReplicaMetrics``): pushes ``render()`` from a daemon thread every
    ``REPORT_PERIOD_S``, without waiting for the hub, and reads every replica's."""

    def __init__(self, hub: Any, replica: str, render: Callable[[], bytes]) -> None:
        self.hub, self.replica, self.render = hub, replica, render
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._push, name="bev-metrics-push", daemon=True)
        self._thread.start()

    def _push(self) -> None:
        while True:
            try:
                self.hub.report.remote(self.replica, self.render())
            except Exception as exc:  # the hub gone (the command stopping): the replica serves on
                log.debug("could not report metrics to the hub: %s", exc)
            if self._stop.wait(REPORT_PERIOD_S):
                return

    async def texts(self) -> dict[str, bytes]:
        texts: dict[str, bytes] = await self.hub.texts.remote(STALE_AFTER_S)
        return texts

    def close(self) -> None:
        self._stop.set()
        try:
            self.hub.forget.remote(self.replica)
        except Exception as exc:
            log.debug("could not leave the hub: %s", exc)


def find_hub() -> Any | None:
    import ray

    try:
        return ray.get_actor(HUB_NAME, namespace=HUB_NAMESPACE)
    except ValueError:
        log.warning("no %s actor in namespace %s: /metrics/fleet shows this replica only", HUB_NAME, HUB_NAMESPACE)
        return None


class BevReplica:
    """One replica: the app ``create_app`` makes, built in the replica's process (its threads, model and tables
    cannot travel), and a health check that holds the replica back from traffic until the app is ready."""

    def __init__(self, fields: dict[str, Any]) -> None:
        from ray import serve

        replica_id = serve.get_replica_context().replica_id.unique_id
        self.settings = Settings(**{**fields, "instance_name": instance_name(replica_id)})
        self._service: Any = None  # the FastAPI app (Serve's wrapper owns the name `app`)
        self._metrics: HubMetrics | None = None

    def __serve_build_asgi_app__(self) -> Any:
        from bev_service.service.app import create_app

        self._service = create_app(self.settings)
        hub = find_hub()
        if hub is not None:
            state = self._service.state.bev
            self._metrics = HubMetrics(hub, self.settings.instance_name or "", state.render_metrics)
            state.replicas = self._metrics
        return self._service

    def __del__(self) -> None:
        """Serve's graceful shutdown of the replica: it leaves the hub at once."""
        if self._metrics is not None:
            self._metrics.close()

    async def check_health(self) -> None:
        """Waits (the first time) until the app is ready; raises when it cannot be: Serve then replaces it."""
        state = self._service.state.bev
        if not state.ready.is_set():
            await asyncio.to_thread(state.ready.wait, READY_TIMEOUT_S)
        if state.error is not None:
            raise RuntimeError(f"the replica cannot serve: {state.error}")
        if not state.ready.is_set():
            raise RuntimeError(f"the replica was not ready within {READY_TIMEOUT_S:g} s")


def deployment(settings: Settings, options: FleetOptions) -> Any:
    """The Serve application: ``BevReplica`` as an ingress deployment with these options."""
    from ray import serve
    from ray.serve.config import AutoscalingConfig

    scaling: dict[str, Any]
    low, high = options.min_replicas, options.max_replicas
    if low is not None and high is not None:
        scaling = {
            "autoscaling_config": AutoscalingConfig(
                min_replicas=low,
                max_replicas=high,
                initial_replicas=max(low, 1),
                target_ongoing_requests=options.target_ongoing_requests,
            )
        }
    else:
        scaling = {"num_replicas": options.replicas}
    ingress = serve.ingress(None)(BevReplica)
    make: Any = serve.deployment  # its stubs type the decorator form only
    return (
        make(ingress, name="BevService")
        .options(
            **scaling,
            max_ongoing_requests=max_ongoing_requests(settings),
            ray_actor_options={"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
            health_check_period_s=HEALTH_PERIOD_S,
            health_check_timeout_s=READY_TIMEOUT_S,
            graceful_shutdown_timeout_s=10.0,
            logging_config={"log_level": settings.log_level.upper(), "enable_access_log": settings.log_level == "debug"},
        )
        .bind(replica_settings(settings))
    )


def start_ray(options: FleetOptions) -> bool:
    """Connects to the cluster at ``options.address``, or starts a local one with room for every replica (its
    logical CPUs at least the replicas' reservations). True when this process started it (and stops it)."""
    ray_environment()
    import ray

    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": True}
    try:
        if options.address is not None:
            ray.init(address=options.address, **common)
            return False
        cpus = max(os.cpu_count() or 1, math.ceil(options.most_replicas * options.replica_cpus) + 1)
        ray.init(num_cpus=cpus, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise FleetError(f"could not start or reach Ray{f' at {options.address}' if options.address else ''}: {exc}") from exc
    return True


def serve_fleet(
    settings: Settings,
    options: FleetOptions,
    *,
    on_ready: Callable[[float], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Deploys the service on Ray Serve, listening on ``settings.host:port``, and blocks until SIGINT or SIGTERM
    (or ``stop``); then removes the application (and stops a Ray this call started). ``on_ready`` gets the
    seconds until every initial replica was ready."""
    stop = stop if stop is not None else threading.Event()
    began = time.perf_counter()
    started_here = start_ray(options)
    import ray
    from ray import serve

    hub = start_hub()
    try:
        serve.start(
            http_options={
                "host": settings.host,
                "port": settings.port,
                "keep_alive_timeout_s": max(1, round(settings.timeout_keep_alive_s)),
            }
        )
        serve.run(deployment(settings, options), name=APP_NAME, route_prefix="/", blocking=False)
        if on_ready is not None:
            on_ready(time.perf_counter() - began)
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        _tear_down(started_here)
        if not started_here:  # a Ray this call started took the hub with it
            ray.kill(hub)


def _tear_down(started_here: bool) -> None:
    import ray
    from ray import serve

    try:
        if started_here:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)  # the cluster and its other applications stay up
    except Exception as exc:  # the teardown must reach ray.shutdown whatever Serve says
        log.warning("could not remove the Serve application cleanly: %s", exc)
    if started_here:
        ray.shutdown()
