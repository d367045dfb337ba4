"""The inference engine: one worker thread owns the network; requests wait in a bounded queue.

The event loop never runs the network. A request decodes its frames in the engine's decode pool (so
a bad image is refused without ever queueing), then queues its decoded frame set; the worker takes
the oldest and up to ``max_batch - 1`` more of the same rig entry and runs them through one network
call. Admission bounds the whole path: at most ``queue_size + max_batch`` requests are in the engine at
once (decoding, waiting, in the network, or fusing label maps), and one more is refused with
``OverloadedError`` at once (503 with Retry-After) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from bev_service.runtime.pipeline import BevResult, Decoded
from bev_service.service.errors import OverloadedError
from bev_service.service.metrics import Metrics
from bev_service.service.rigs import RigEntry

__all__ = ["Engine", "Frames", "OverloadedError"]

log = logging.getLogger(__name__)

Frames = Mapping[str, bytes | NDArray[np.uint8]]


@dataclass
class _Job:
    entry: RigEntry
    decoded: Decoded
    future: Future[BevResult]
    queued_at: float = field(default_factory=time.perf_counter)


class Engine:
    def __init__(self, *, queue_size: int, max_batch: int, metrics: Metrics, decode_threads: int = 4) -> None:
        self.queue_size = queue_size
        self.max_batch = max_batch
        self.metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._inside = 0  # requests admitted and not answered yet
        self._recent_ms: deque[float] = deque(maxlen=16)  # network time per frame set, for Retry-After
        self._decode_pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="bev-request")
        self._worker = threading.Thread(target=self._run, name="bev-engine", daemon=True)
        self._worker.start()

    # -- public, called from the event loop ---------------------------------------------------

    async def infer(self, entry: RigEntry, frames: Frames) -> BevResult:
        """Decode (in the pool), queue, and wait for the grid. FrameError / OverloadedError on bad input or a full engine."""
        with self._admitted():
            loop = asyncio.get_running_loop()
            decoded = await loop.run_in_executor(self._decode_pool, lambda: entry.pipeline.decode(frames))
            return await asyncio.wrap_future(self.submit(entry, decoded))

    async def fuse(self, entry: RigEntry, label_maps: Frames) -> BevResult:
        """Fusion only (no network): runs in the decode pool, beside the worker, under the same admission."""
        with self._admitted():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._decode_pool, lambda: entry.pipeline.fuse(label_maps))

    @contextmanager
    def _admitted(self) -> Iterator[None]:
        with self._cond:
            self._check_room()
            limit = self.queue_size + self.max_batch
            if self._inside >= limit:
                self.metrics.rejected.inc()
                raise OverloadedError(
                    f"{self._inside} frame sets are waiting or running (the limit is {limit}: BEV_QUEUE_SIZE + BEV_MAX_BATCH)",
                    self.retry_after_s(),
                )
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1

    def submit(self, entry: RigEntry, decoded: Decoded) -> Future[BevResult]:
        future: Future[BevResult] = Future()
        with self._cond:
            self._check_room()
            self._jobs.append(_Job(entry, decoded, future))
            self.metrics.queue_depth.set(len(self._jobs))
            self._cond.notify()
        return future

    def depth(self) -> int:
        return len(self._jobs)

    def retry_after_s(self) -> float:
        per_set = (sum(self._recent_ms) / len(self._recent_ms) / 1000.0) if self._recent_ms else 0.1
        return max(1.0, round(per_set * max(1, len(self._jobs)), 1))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout=10)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    # -- the worker ------------------------------------------------------------------------------

    def _check_room(self) -> None:
        if self._closed:
            raise OverloadedError("the service is shutting down", retry_after_s=5.0)
        if len(self._jobs) >= self.queue_size:
            self.metrics.rejected.inc()
            raise OverloadedError(
                f"{len(self._jobs)} frame sets are waiting (the limit is {self.queue_size})", self.retry_after_s()
            )

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            first = self._jobs.popleft()
            batch = [first]
            # Same entry object: same rig version and the same pipeline, so one network call serves all.
            for job in list(self._jobs):
                if len(batch) >= self.max_batch:
                    break
                if job.entry is first.entry:
                    self._jobs.remove(job)
                    batch.append(job)
            self.metrics.queue_depth.set(len(self._jobs))
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            started = time.perf_counter()
            for job in live:
                self.metrics.queue_wait.observe(started - job.queued_at)
            try:
                results = live[0].entry.pipeline.run_decoded([job.decoded for job in live])
            except Exception as exc:  # one failed network call fails its batch, never the worker
                log.exception("inference failed for a batch of %d frame sets", len(live))
                for job in live:
                    job.future.set_exception(exc)
                continue
            self._recent_ms.append((time.perf_counter() - started) * 1000.0 / len(live))
            self.metrics.batch_size.observe(len(live))
            for job, result in zip(live, results, strict=True):
                job.future.set_result(result)
