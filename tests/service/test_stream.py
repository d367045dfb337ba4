"""The WebSocket stream against a real uvicorn: replies in order with their sequence numbers and
stamps; a sender twice as fast as the service gets the newest frame sets answered and the rest
counted as dropped, with no growth in latency or memory."""

from __future__ import annotations

import io
import itertools
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import msgpack
import numpy as np
import psutil
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from bev_service.geometry.rig import Rig
from bev_service.synth import RenderedFrameSet
from tests.service.conftest import Files, LiveServer

FAST_SEND_S = 3.0


@contextmanager
def stream(live: LiveServer, **kwargs: Any) -> Iterator[ClientConnection]:
    with connect(live.ws_url, max_size=None, open_timeout=30, **kwargs) as ws:
        yield ws


def frame_message(seq: int, images: dict[str, bytes], stamp: float | None = None, **extra: Any) -> bytes:
    return msgpack.packb({"seq": seq, "stamp": stamp, "images": images, **extra}, use_bin_type=True)


def receive(ws: ClientConnection, timeout_s: float = 60.0) -> dict[str, Any]:
    data = ws.recv(timeout=timeout_s)
    assert isinstance(data, bytes), "the service answers in binary frames"
    reply = msgpack.unpackb(data, raw=False)
    assert isinstance(reply, dict)
    return reply


def grid_of(reply: dict[str, Any]) -> np.ndarray:
    with Image.open(io.BytesIO(reply["grid"])) as image:
        assert image.format == "PNG" and image.mode == "P"
        grid = np.asarray(image).copy()
    assert grid.shape == (reply["rows"], reply["cols"])
    return grid


def test_replies_carry_seq_and_stamp_in_order(
    server: LiveServer, frame_set: RenderedFrameSet, image_files: Files, default_rig: Rig
) -> None:
    rest = httpx.post(server.url("/v1/bev"), files=image_files, params={"format": "raw"}, timeout=60)
    rest_grid = np.frombuffer(rest.content, np.uint8).reshape(default_rig.grid.shape)
    with stream(server) as ws:
        for seq in (7, 8, 20, 21):
            stamp = 1000.0 + seq / 10
            ws.send(frame_message(seq, frame_set.jpeg, stamp))
            reply = receive(ws)
            assert "error" not in reply, reply.get("error")
            assert (reply["seq"], reply["stamp"], reply["dropped"], reply["rig"]) == (seq, stamp, 0, "default")
            assert (reply["rows"], reply["cols"]) == default_rig.grid.shape
            assert {"decode", "segment", "warp", "encode", "total"} <= set(reply["timing_ms"])
            np.testing.assert_array_equal(grid_of(reply), rest_grid, "the stream and REST give the same grid")
        ws.send(frame_message(22, frame_set.jpeg))
        assert receive(ws)["stamp"] is None, "a frame set without a stamp gets none back"


def test_back_to_back_frame_sets_come_back_in_order(server: LiveServer, frame_set: RenderedFrameSet) -> None:
    """Sent without waiting: every answered seq is one that was sent, in increasing order, and answered
    plus dropped is all that was sent (the last one is always answered: it is the newest)."""
    sent = list(range(100, 106))
    with stream(server) as ws:
        for seq in sent:
            ws.send(frame_message(seq, frame_set.jpeg, float(seq)))
        replies = [receive(ws)]
        while replies[-1]["seq"] != sent[-1]:
            replies.append(receive(ws))
    seqs = [r["seq"] for r in replies]
    assert seqs == sorted(set(seqs)) and set(seqs) <= set(sent)
    assert all(r["stamp"] == float(r["seq"]) for r in replies)
    dropped = [r["dropped"] for r in replies]
    assert dropped == sorted(dropped)
    assert len(replies) + dropped[-1] == len(sent), (seqs, dropped)


def service_time_s(ws: ClientConnection, images: dict[str, bytes], count: int = 6) -> float:
    """Median round trip of one frame set at a time: what the service needs per frame set."""
    times = []
    for seq in range(count):
        began = time.perf_counter()
        ws.send(frame_message(-1 - seq, images))
        assert receive(ws)["seq"] == -1 - seq
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:])


def test_twice_too_fast_sender_gets_drops_not_a_backlog(server: LiveServer, frame_set: RenderedFrameSet) -> None:
    process = psutil.Process()
    with stream(server) as ws:
        per_frame_s = service_time_s(ws, frame_set.jpeg)
        interval_s = per_frame_s / 2
        sent_at: dict[int, float] = {}
        done = threading.Event()
        rss_mib: list[float] = []

        def sender() -> None:
            seq, start = 0, time.perf_counter()
            while time.perf_counter() - start < FAST_SEND_S:
                sent_at[seq] = time.perf_counter()
                ws.send(frame_message(seq, frame_set.jpeg, sent_at[seq]))
                if seq in (10, 30):
                    rss_mib.append(process.memory_info().rss / 2**20)
                seq += 1
                time.sleep(max(0.0, start + seq * interval_s - time.perf_counter()))
            done.set()

        thread = threading.Thread(target=sender, name="fast-sender")
        thread.start()
        replies: list[dict[str, Any]] = []
        try:
            while not (done.is_set() and replies and replies[-1]["seq"] == max(sent_at)):
                reply = receive(ws, timeout_s=30)
                reply["latency_s"] = time.perf_counter() - sent_at[reply["seq"]]
                replies.append(reply)
        finally:
            thread.join(timeout=FAST_SEND_S + 30)
        rss_mib.append(process.memory_info().rss / 2**20)

    sent = len(sent_at)
    assert all("error" not in r for r in replies), [r["error"] for r in replies if "error" in r][:3]
    seqs, dropped = [r["seq"] for r in replies], [r["dropped"] for r in replies]
    assert all(a < b for a, b in itertools.pairwise(seqs)), "replies come back in increasing seq"
    assert dropped == sorted(dropped) and dropped[-1] > 0, "the running drop count grows"
    assert len(replies) + dropped[-1] == sent, f"{sent} sent = {len(replies)} answered + {dropped[-1]} dropped"

    latency_ms = [r["latency_s"] * 1000 for r in replies]
    k = max(3, len(latency_ms) // 5)
    first, last = statistics.median(latency_ms[:k]), statistics.median(latency_ms[-k:])
    per_frame_ms = per_frame_s * 1000
    summary = (
        f"service {per_frame_ms:.1f} ms/frame set, sent {sent} at {1 / interval_s:.0f}/s, answered {len(replies)}, "
        f"dropped {dropped[-1]}; latency first {first:.1f} ms, last {last:.1f} ms, max {max(latency_ms):.1f} ms; "
        f"RSS {rss_mib[0]:.0f} -> {rss_mib[-1]:.0f} MiB"
    )
    print(summary)
    # A queue would add half a service time of latency per frame set sent: seconds by the end. Latest-wins
    # keeps it at one or two service times, whatever the load on the machine does to that time.
    assert last < 2 * first + 10 * per_frame_ms, summary
    assert rss_mib[-1] - rss_mib[0] < 64, summary

    metrics = httpx.get(server.url("/metrics")).text
    total = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("bev_stream_dropped_total "))
    assert total >= dropped[-1], summary
