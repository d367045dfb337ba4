"""``bev serve --engine ray``: the service as two real Ray Serve replicas behind Serve's proxy on 127.0.0.1.

The fleet is the command a user runs, in a child process that starts its own local Ray (``ServerProcess``, the
benchmarks' server); the single process it is compared with is the session's plain server (``server``), both on
the same tiny network and default rig. Each reply names the replica that answered (``X-Bev-Instance``:
``<replica>@<host>:<pid>``), which is how the tests see the spread and whom to kill.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from bench.service import ServerProcess, stream_connect, stream_round_trip
from bev_service.client import BevClient, StreamClient, decode_grid_png
from bev_service.service.ray_serve import REPORT_PERIOD_S
from bev_service.synth import RenderedFrameSet
from tests.conftest import DEFAULT_RIG
from tests.live_server import LiveServer
from tests.service.conftest import Files
from tests.service.test_rigs import as_yaml, default_data, with_front_pitch

pytestmark = pytest.mark.slow

REPLICAS = 2
INSTANCE = "x-bev-instance"
READY_LINE = "on Ray Serve"  # bev serve --engine ray prints it once every replica is ready


@pytest.fixture(scope="module")
def fleet(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    scratch = tmp_path_factory.mktemp("fleet")
    process = ServerProcess(
        tiny_weights,
        "torch",
        scratch,
        rig=DEFAULT_RIG,
        env={"BEV_DEMO_FRAMES": "2", "BEV_LOG_LEVEL": "warning"},
        args=["--engine", "ray", "--replicas", str(REPLICAS)],
    )
    process.start()
    try:
        process.wait_ready(240, log_line=READY_LINE)
        yield process
    finally:
        process.stop(60)


def instance_of(reply: httpx.Response) -> str:
    name = reply.headers.get(INSTANCE)
    assert name, f"no {INSTANCE} header on a reply from the fleet: {dict(reply.headers)}"
    return name


def pid_of(instance: str) -> int:
    return int(instance.rsplit(":", 1)[1])


def post(http: httpx.Client, files: Files, **params: str) -> httpx.Response:
    return http.post("/v1/bev", files=files, params=params, headers={"accept": "image/png"}, timeout=60)


def replies_by_instance(fleet: ServerProcess, files: Files, count: int, **params: str) -> dict[str, list[httpx.Response]]:
    """``count`` POSTs from 4 clients at once, grouped by the replica that answered."""
    seen: dict[str, list[httpx.Response]] = {}
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(base_url=fleet.url, trust_env=False) as http:
            for _ in range(n):
                reply = post(http, files, **params)
                with lock:
                    seen.setdefault(instance_of(reply), []).append(reply)

    threads = [threading.Thread(target=client, args=(count // 4,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen


def test_rest_replies_equal_the_single_process(fleet: ServerProcess, server: LiveServer, frame_set: RenderedFrameSet) -> None:
    with (
        BevClient(fleet.url, transport=httpx.HTTPTransport()) as ours,
        BevClient(server.base_url, transport=httpx.HTTPTransport()) as one,
    ):
        for _ in range(4):  # more than one replica answers some of them
            assert ours.bev(frame_set.jpeg, format="png") == one.bev(frame_set.jpeg, format="png")
        raw_fleet, raw_single = ours.bev(frame_set.jpeg, format="raw"), one.bev(frame_set.jpeg, format="raw")
        assert raw_fleet.rig == raw_single.rig and np.array_equal(raw_fleet.cells, raw_single.cells)
        fleet_json, single_json = ours.bev(frame_set.jpeg), one.bev(frame_set.jpeg)
        assert fleet_json["grid"] == single_json["grid"] and fleet_json["rig_fingerprint"] == single_json["rig_fingerprint"]
        assert ours.model()["sha256"] == one.model()["sha256"]


def test_stream_replies_equal_the_single_process(fleet: ServerProcess, server: LiveServer, frame_set: RenderedFrameSet) -> None:
    async def grids(url: str) -> list[bytes]:
        async with StreamClient(url) as stream:
            replies = []
            for seq in range(3):
                await stream.send(seq, frame_set.jpeg)
                reply = await stream.recv()
                assert reply.ok and reply.seq == seq, reply
                replies.append(reply.grid)
            return replies

    through_serve, single = asyncio.run(grids(fleet.url)), asyncio.run(grids(server.base_url))
    assert through_serve == single
    assert decode_grid_png(through_serve[0]).shape == (400, 400)


def test_requests_spread_over_both_replicas(fleet: ServerProcess, image_files: Files) -> None:
    seen = replies_by_instance(fleet, image_files, 24)
    assert len(seen) == REPLICAS, {k: len(v) for k, v in seen.items()}
    assert all(r.status_code == 200 for replies in seen.values() for r in replies)
    assert len({pid_of(name) for name in seen}) == REPLICAS  # two processes, not one answering twice
    # Serve's proxy gives each reply its one request id; the replica does not add a second.
    reply = next(iter(seen.values()))[0]
    assert len(reply.headers.get_list("x-request-id")) == 1, reply.headers


def fleet_frame_sets(fleet: ServerProcess) -> tuple[dict[str, float], float]:
    """``/metrics/fleet``'s REST frame sets by replica, and how many replicas it says it holds."""
    text = httpx.get(fleet.url + "/metrics/fleet", timeout=30).text
    found = [s for family in text_string_to_metric_families(text) for s in family.samples]
    counts = {s.labels["replica"]: s.value for s in found if s.name == "bev_frame_sets_total" and s.labels["source"] == "rest"}
    return counts, next(s.value for s in found if s.name == "bev_fleet_replicas")


def test_fleet_metrics_count_every_replicas_frame_sets(fleet: ServerProcess, image_files: Files) -> None:
    """Any replica's /metrics/fleet holds both replicas, each labelled as its replies name it, and counts
    every frame set answered once the replicas have reported (every REPORT_PERIOD_S)."""
    time.sleep(REPORT_PERIOD_S + 1)  # what earlier tests sent has been reported
    before, _ = fleet_frame_sets(fleet)
    seen = replies_by_instance(fleet, image_files, 16)
    assert all(r.status_code == 200 for replies in seen.values() for r in replies)
    deadline = time.monotonic() + 6 * REPORT_PERIOD_S
    while True:
        after, replicas = fleet_frame_sets(fleet)
        if sum(after.values()) - sum(before.values()) == 16 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert replicas == REPLICAS and len(after) == REPLICAS, after
    assert {name: after[name] - before.get(name, 0.0) for name in seen} == {name: len(r) for name, r in seen.items()}


def test_a_rig_put_on_one_replica_reaches_every_replica(fleet: ServerProcess, image_files: Files) -> None:
    text = as_yaml({**with_front_pitch(default_data(), 34.0), "rig_id": "fleet-rig"})
    put = httpx.put(fleet.url + "/v1/rigs/fleet-rig", content=text, headers={"content-type": "application/yaml"}, timeout=120)
    assert put.status_code == 201, put.text
    stored_by = instance_of(put)
    fingerprint = put.json()["fingerprint"]
    # Every replica serves it from the next request on: the one that stored it and the other.
    seen = replies_by_instance(fleet, image_files, 16, rig="fleet-rig")
    assert len(seen) == REPLICAS and stored_by in seen, {k: len(v) for k, v in seen.items()}
    assert all(r.status_code == 200 for replies in seen.values() for r in replies), [
        r.text for replies in seen.values() for r in replies if r.status_code != 200
    ]
    listed = {instance_of(r): r.json() for r in (httpx.get(fleet.url + "/v1/rigs/fleet-rig") for _ in range(12))}
    assert {body["fingerprint"] for body in listed.values()} == {fingerprint}
    # A DELETE on one replica: the rig is gone on every one.
    gone = httpx.delete(fleet.url + "/v1/rigs/fleet-rig")
    assert gone.status_code == 204, gone.text
    after = replies_by_instance(fleet, image_files, 12, rig="fleet-rig")
    assert len(after) == REPLICAS
    assert {r.status_code for replies in after.values() for r in replies} == {404}
    assert {r.json()["error"] for replies in after.values() for r in replies} == {"unknown_rig"}


@dataclass
class Load:
    """Clients each with one POST in flight, until stopped: what they got, and when."""

    url: str
    files: Files
    clients: int = 4
    ok: list[tuple[float, str]] = field(default_factory=list)  # (time, replica)
    failed: list[tuple[float, str]] = field(default_factory=list)  # (time, what the client met)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for t in threads:
            t.start()
        return threads

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, trust_env=False) as http:
            while not self.stop.is_set():
                try:
                    reply = post(http, self.files)
                except httpx.TransportError as exc:
                    self.failed.append((time.monotonic(), f"transport: {exc!r}"))
                    continue
                if reply.status_code == 200:
                    self.ok.append((time.monotonic(), instance_of(reply)))
                else:
                    self.failed.append((time.monotonic(), f"{reply.status_code} {reply.text[:120]}"))


def frames_of(files: Files) -> dict[str, bytes]:
    return {name: data for name, (_, data, _) in files.items()}


def streams_on_each(fleet: ServerProcess, instances: set[str], stack: ExitStack) -> dict[str, ClientConnection]:
    """One open stream on each replica (a stream stays on the replica its handshake reached, which its
    ``X-Bev-Instance`` names), each with a frame set answered."""
    found: dict[str, ClientConnection] = {}
    for _ in range(16):
        if set(found) == instances:
            return found
        ws = stack.enter_context(stream_connect(fleet))
        name = ws.response.headers.get(INSTANCE) if ws.response is not None else None
        if name in instances and name not in found:
            found[name] = ws
        else:
            ws.close()
    raise AssertionError(f"no stream reached each of {instances}: {set(found)}")


def test_a_killed_replica_is_replaced_and_only_its_requests_in_flight_fail(fleet: ServerProcess, image_files: Files) -> None:
    load, stack = Load(fleet.url, image_files), ExitStack()
    threads = load.run()
    try:
        deadline = time.monotonic() + 60
        while len({name for _, name in load.ok}) < REPLICAS and time.monotonic() < deadline:
            time.sleep(0.1)
        before = {name for _, name in load.ok}
        assert len(before) == REPLICAS, before
        victim = sorted(before)[0]
        streams = streams_on_each(fleet, before, stack)
        killed_at = time.monotonic()
        os.kill(pid_of(victim), signal.SIGKILL)  # a crash: no graceful shutdown, requests on it cut off
        # Serve's controller starts a replacement; the load goes on meanwhile.
        deadline = killed_at + 120
        while time.monotonic() < deadline:
            if {name for t, name in load.ok if t > killed_at} - before:
                break
            time.sleep(0.2)
        replaced_at = time.monotonic()
        time.sleep(2.0)  # the new replica takes its share
    finally:
        load.stop.set()
        for t in threads:
            t.join(timeout=90)
    # The stream on the killed replica dropped (1006, no close frame); the one on the live replica goes on.
    with pytest.raises(ConnectionClosed) as dropped:
        stream_round_trip(streams[victim], 1, frames_of(image_files))
    assert dropped.value.rcvd is None  # no close frame: the replica is gone, not closing
    (survivor,) = before - {victim}
    assert "grid" in stream_round_trip(streams[survivor], 1, frames_of(image_files))
    stack.close()
    after = [name for t, name in load.ok if t > killed_at]
    new = set(after) - before
    assert new, f"no replacement replica answered within 120 s; failures: {load.failed}"
    assert victim not in {name for t, name in load.ok if t > killed_at + 1.0}
    # Only the requests in flight on the killed replica failed: at most one per client, each a clear 500 from
    # Serve's proxy, right after the kill; the others were answered by the live replica throughout.
    assert len(load.failed) <= load.clients, load.failed
    assert all(what.startswith("500") for _, what in load.failed), load.failed
    assert all(t - killed_at < 5.0 for t, _ in load.failed), load.failed
    # A reply the victim sent just before SIGKILL can be read after it: the same grace of 1 s as above.
    served_meanwhile = [name for t, name in load.ok if killed_at + 1.0 < t < replaced_at]
    assert served_meanwhile and set(served_meanwhile) <= (before - {victim}) | new
    live = {name for t, name in load.ok if t > replaced_at}
    assert live == (before - {victim}) | new, live


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--foxglove-port", "0"], "--engine local only"),
        (["--min-replicas", "1"], "both --min-replicas and --max-replicas"),
        (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas <= --max-replicas"),
        (["--replicas", "0"], "--replicas must be at least 1"),
    ],
)
def test_bad_fleet_flags_fail_before_ray_starts(
    flags: list[str], words: str, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bev_service.cli.main import main

    argv = ["serve", "--engine", "ray", "--model", str(tiny_weights), "--backend", "torch", "--rigs-dir", str(tmp_path), *flags]
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_the_fleet_stops_with_its_ray(fleet: ServerProcess) -> None:
    """Last in this module: SIGINT ends the command with 0, and the Serve application and the local Ray it started
    (raylet, GCS, the proxy, the controller, the replicas) go with it; nothing is left running."""
    children = psutil.Process(fleet.pid).children(recursive=True)
    assert any("raylet" in " ".join(c.cmdline()) for c in children), [c.cmdline()[:2] for c in children]
    assert fleet.stop(60) == 0, fleet.log_tail()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [(p.pid, p.cmdline()[:2]) for p in alive]
