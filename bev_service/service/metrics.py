"""Prometheus metrics of one app (its own registry, so that several apps in one process, as in the
tests, do not share counters), and the exposition of several apps' metrics as one (``merge_replicas``: the
fleet's ``/metrics/fleet``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

REPLICA_LABEL = "replica"  # on every sample of /metrics/fleet: which process's it is
STAGE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bev_http_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.frames = Counter("bev_frame_sets", "Frame sets answered with a grid, by source", ["source"], registry=r)
        self.bad_frames = Counter("bev_bad_frame_sets", "Frame sets refused for bad input, by source", ["source"], registry=r)
        self.stage = Histogram("bev_stage_seconds", "Pipeline stage latency", ["stage"], buckets=STAGE_BUCKETS_S, registry=r)
        self.request_latency = Histogram(
            "bev_request_seconds", "Frame set latency as a client sees it", ["source"], buckets=STAGE_BUCKETS_S, registry=r
        )
        self.queue_depth = Gauge("bev_queue_depth", "Frame sets waiting for the network", registry=r)
        self.queue_wait = Histogram("bev_queue_wait_seconds", "Wait for the network", buckets=STAGE_BUCKETS_S, registry=r)
        self.batch_size = Histogram("bev_batch_size", "Frame sets per network call", buckets=(1, 2, 3, 4, 6, 8), registry=r)
        self.rejected = Counter("bev_overload_rejections", "Frame sets refused with 503 because the queue was full", registry=r)
        self.dropped = Counter("bev_stream_dropped", "Stream frame sets dropped because a newer one arrived", registry=r)
        self.foxglove_published = Counter("bev_foxglove_published", "Frame sets published to Foxglove clients", registry=r)
        self.foxglove_dropped = Counter(
            "bev_foxglove_dropped", "Frame sets not published to Foxglove because newer ones filled its queue", registry=r
        )
        self.streams = Gauge("bev_stream_connections", "Open WebSocket streams", registry=r)

    def observe_stages(self, timings_ms: Mapping[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage.labels(stage=stage).observe(ms / 1000.0)

    def frame_set_answered(self, source: str, timings_ms: Mapping[str, float], began: float) -> None:
        """A grid went back; ``began`` is the ``time.perf_counter()`` of its arrival."""
        self.frames.labels(source=source).inc()
        self.observe_stages(timings_ms)
        self.request_latency.labels(source=source).observe(time.perf_counter() - began)

    def frame_set_refused(self, source: str) -> None:
        self.bad_frames.labels(source=source).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ReplicaMetrics(Protocol):
    """Where a replica finds the other replicas' metrics (``ray_serve.HubMetrics``)."""

    async def texts(self) -> dict[str, bytes]:
        """``{replica name: its latest /metrics text}`` of every live replica."""
        ...


class _Families:
    """A collector of ready-made metric families (one exposition, rendered once)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def merge_replicas(texts: Mapping[str, str | bytes]) -> bytes:
    """The metrics of several processes, ``{replica name: its /metrics text}``, as one exposition: each sample
    labelled ``replica="<name>"`` (so no two replicas' series collide and PromQL sums them: ``sum
    by (source) (bev_frame_sets_total)``), one family per metric name, and ``bev_fleet_replicas``, how many
    replicas it holds."""
    families: dict[str, Metric] = {}
    for replica, text in texts.items():
        body = text.decode("utf-8") if isinstance(text, bytes) else text
        for family in text_string_to_metric_families(body):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            for sample in family.samples:
                merged.add_sample(sample.name, {**sample.labels, REPLICA_LABEL: replica}, sample.value, sample.timestamp)
    count = Metric("bev_fleet_replicas", "Replicas whose metrics this exposition holds", "gauge")
    count.add_sample("bev_fleet_replicas", {}, float(len(texts)))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), count]))
    return generate_latest(registry)
