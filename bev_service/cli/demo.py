"""``bev demo``: stream a synthetic drive to a running service and report the frame rate it achieves.

bev demo --url http://127.0.0.1:8000 --frames 200 --fps 10
bev demo --fps 0 --frames 100          # as fast as replies allow, at most 2 frame sets in flight

The drive (``--drive-frames`` distinct frame sets of the rig, rendered while the service gets ready)
is looped to ``--frames``. The last line printed is one JSON object:
``{"demo": "stream", "sent", "received", "dropped", "errors", "fps", "median_latency_ms"}``; the exit
status is 0 when grids came back and nothing failed, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bev_service.calib.rigfile import load_rig
from bev_service.client import DEFAULT_URL, BevClient, ServiceError, StreamClient, StreamReply
from bev_service.errors import BevError
from bev_service.geometry.rig import Rig
from bev_service.shipped import DEFAULT_RIG
from bev_service.synth.dataset import world_seed
from bev_service.synth.drive import DrivePlan, iter_drive
from bev_service.synth.world import SyntheticWorld

MAX_IN_FLIGHT = 2  # with --fps 0: one frame set computing, one waiting; never a drop
DRIVE_SPEED_MPS = 8.0
DRIVE_FPS = 10.0  # the drive's own clock: how far the car moves between frame sets, whatever --fps sends at
POLL_S = 0.25
Frames = dict[str, bytes]


class DemoArgumentError(BevError):
    """Options of ``bev demo`` that cannot work."""


def register(commands: Any) -> None:
    p = commands.add_parser(
        "demo",
        help="stream a synthetic drive to a running service and report the frame rate",
        description="Render a synthetic drive of the rig, stream it over the service's WebSocket (/v1/stream) and "
        "print progress and, last, one JSON line with the frame sets sent, grids received, frame sets the service "
        "dropped (latest wins), errors, the achieved grids per second and the median latency.",
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    p.add_argument("--frames", type=int, default=100, help="frame sets to send (default 100)")
    p.add_argument("--fps", type=float, default=10.0, help="frame sets per second to send; 0: as fast as replies allow")
    p.add_argument("--token", default=os.environ.get("BEV_API_TOKEN"), help="bearer token (default $BEV_API_TOKEN)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world and the drive (default 0)")
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for /readyz before streaming (default 120)")
    p.add_argument("--rig", type=Path, help="rig file to render; its rig_id is sent (default: the shipped default rig)")
    p.add_argument("--scale", type=float, default=1.0, help="image size as a fraction of the rig's, e.g. 0.5 (default 1)")
    p.add_argument("--drive-frames", type=int, default=24, help="distinct frame sets rendered and looped (default 24)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds without a reply before giving up (default 30)")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    if args.frames < 1:
        raise DemoArgumentError(f"--frames must be at least 1, got {args.frames}")
    if not 0.0 <= args.fps <= 1000.0:
        raise DemoArgumentError(f"--fps must be between 0 (as fast as replies allow) and 1000, got {args.fps}")
    if args.drive_frames < 1:
        raise DemoArgumentError(f"--drive-frames must be at least 1, got {args.drive_frames}")
    if not 0.05 <= args.scale <= 1.0:
        raise DemoArgumentError(f"--scale must be between 0.05 and 1, got {args.scale}")
    if args.seed < 0:
        raise DemoArgumentError(f"--seed must be >= 0, got {args.seed}")
    if args.wait < 0 or args.timeout <= 0:
        raise DemoArgumentError(f"--wait must be >= 0 and --timeout > 0, got {args.wait} and {args.timeout}")


def render_drive(rig: Rig, *, frames: int, seed: int, scale: float, stop: threading.Event | None = None) -> list[Frames]:
    """The JPEG files of the first ``frames`` frame sets of the seeded drive along the ring road (about
    0.4 s each at full size); stops early when ``stop`` is set."""
    world = SyntheticWorld(world_seed(seed, 0))
    plan = DrivePlan(frames=frames, speed_mps=DRIVE_SPEED_MPS, fps=DRIVE_FPS)
    drive: list[Frames] = []
    for frame in iter_drive(rig, world, plan, seed=seed, scale=scale):
        drive.append(dict(frame.frame_set.jpeg))
        if stop is not None and stop.is_set():
            break
    return drive


@dataclass
class DemoStats:
    sent: int = 0
    received: int = 0
    dropped: int = 0  # the service's running count on this connection
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    started: float | None = None  # perf_counter of the first send
    last_reply: float | None = None

    @property
    def settled(self) -> bool:
        """Every frame set sent is answered or known dropped."""
        return self.received + self.errors + self.dropped >= self.sent

    @property
    def fps(self) -> float:
        if self.started is None or self.last_reply is None or self.last_reply <= self.started:
            return 0.0
        return self.received / (self.last_reply - self.started)

    def line(self) -> str:
        return f"demo: sent {self.sent} received {self.received} dropped {self.dropped} errors {self.errors} fps {self.fps:.1f}"

    def summary(self) -> dict[str, Any]:
        median = statistics.median(self.latencies_ms) if self.latencies_ms else None
        return {
            "demo": "stream",
            "sent": self.sent,
            "received": self.received,
            "dropped": self.dropped,
            "errors": self.errors,
            "fps": round(self.fps, 2),
            "median_latency_ms": None if median is None else round(median, 1),
        }


async def stream_drive(
    stream: StreamClient,
    drive: list[Frames],
    *,
    count: int,
    fps: float,
    rig_id: str | None = None,
    timeout_s: float = 30.0,
    progress_s: float | None = 1.0,
) -> DemoStats:
    """Send ``count`` frame sets (the drive looped) at ``fps`` (0: keep ``MAX_IN_FLIGHT`` in flight)
    and collect the replies until every frame set is answered or dropped, or ``timeout_s`` passes
    without a reply (the ones still missing count as errors)."""
    stats = DemoStats()
    sent_at: dict[int, float] = {}
    window = asyncio.Semaphore(MAX_IN_FLIGHT) if fps == 0 else None

    async def send_all() -> None:
        start = time.perf_counter()
        for seq in range(count):
            if window is not None:
                await window.acquire()
            else:
                await asyncio.sleep(max(0.0, start + seq / fps - time.perf_counter()))
            sent_at[seq] = time.perf_counter()
            stats.started = stats.started or sent_at[seq]
            stats.sent += 1
            await stream.send(seq, drive[seq % len(drive)], rig=rig_id)

    sender = asyncio.create_task(send_all())
    last_heard = last_print = time.perf_counter()
    try:
        while not (sender.done() and stats.settled):
            if sender.done():
                sender.result()  # re-raises a failed send
            try:
                reply = await stream.recv(timeout_s=POLL_S)
            except TimeoutError:
                if time.perf_counter() - last_heard > timeout_s and not stats.settled:
                    print(f"demo: no reply for {timeout_s:g} s; giving up", file=sys.stderr)
                    stats.errors += stats.sent - stats.received - stats.errors - stats.dropped
                    break
                continue
            last_heard = time.perf_counter()
            released = _count(stats, reply, sent_at, last_heard)
            if window is not None:
                for _ in range(released):
                    window.release()
            if progress_s is not None and last_heard - last_print >= progress_s:
                print(stats.line(), flush=True)
                last_print = last_heard
    except ServiceError as exc:  # the service closed the stream
        print(f"demo: stream failed: {exc}", file=sys.stderr)
        stats.errors += 1
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    return stats


def _count(stats: DemoStats, reply: StreamReply, sent_at: dict[int, float], now: float) -> int:
    """Book one reply; returns how many frame sets it settles (itself and those newly dropped)."""
    newly_dropped = max(0, reply.dropped - stats.dropped)
    stats.dropped += newly_dropped
    if not reply.ok:
        stats.errors += 1
        print(f"demo: frame set {reply.seq}: {reply.error}", file=sys.stderr)
        sent_at.pop(reply.seq, None)
        return 1 + newly_dropped
    stats.received += 1
    stats.last_reply = now
    if reply.seq in sent_at:
        stats.latencies_ms.append((now - sent_at[reply.seq]) * 1e3)
    for seq in [s for s in sent_at if s <= reply.seq]:  # older ones were dropped: no reply will come
        del sent_at[seq]
    return 1 + newly_dropped


async def _stream(args: argparse.Namespace, drive: list[Frames], rig_id: str) -> DemoStats:
    async with StreamClient(args.url, args.token, timeout_s=args.timeout) as stream:
        return await stream_drive(stream, drive, count=args.frames, fps=args.fps, rig_id=rig_id, timeout_s=args.timeout)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    rig = load_rig(args.rig or DEFAULT_RIG)
    distinct = min(args.frames, args.drive_frames)
    stats = DemoStats()
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="bev-demo-render") as pool:
        started = time.perf_counter()
        rendering = pool.submit(render_drive, rig, frames=distinct, seed=args.seed, scale=args.scale, stop=stop)
        print(f"demo: rendering {distinct} frame sets of rig {rig.rig_id!r}; waiting for {args.url}/readyz", flush=True)
        with BevClient(args.url, args.token, timeout_s=min(10.0, args.timeout)) as client:
            ready = client.wait_ready(args.wait)
        if not ready:
            stop.set()
            print(f"demo: the service at {args.url} was not ready within {args.wait:g} s", file=sys.stderr)
            stats.errors = 1
            print(json.dumps(stats.summary()), flush=True)
            return 1
        drive = rendering.result()
        print(f"demo: service ready; {len(drive)} frame sets rendered in {time.perf_counter() - started:.1f} s", flush=True)
    try:
        stats = asyncio.run(_stream(args, drive, rig.rig_id))
    except (ServiceError, OSError) as exc:
        print(f"demo: stream failed: {exc}", file=sys.stderr)
        stats.errors += 1
    print(stats.line(), flush=True)
    print(json.dumps(stats.summary()), flush=True)
    return 0 if stats.received > 0 and stats.errors == 0 else 1
