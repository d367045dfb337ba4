"""The viewer's built-in synthetic drive: frame sets of the default rig rendered on demand and kept.

Rendering takes about 0.4 s per frame set of four 960x640 cameras, so each is rendered once, when
first asked for, in a worker thread; the viewer plays them through the stream like any client.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

from bev_service.geometry.rig import Rig
from bev_service.synth.dataset import world_seed
from bev_service.synth.drive import DrivePlan, iter_drive
from bev_service.synth.world import SyntheticWorld

DEMO_SEED = 7
DEMO_SPEED_MPS = 8.0
DEMO_FPS = 10.0


class DemoDrive:
    def __init__(self, rig: Rig, frames: int, scale: float = 1.0) -> None:
        self.rig, self.frames, self.scale = rig, frames, scale
        self.plan = DrivePlan(frames=frames, speed_mps=DEMO_SPEED_MPS, fps=DEMO_FPS)
        self._world: SyntheticWorld | None = None
        self._cache: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def frame(self, index: int) -> bytes:
        """Frame set ``index`` as msgpack ``{"index", "count", "stamp", "images": {camera: JPEG bytes}}``."""
        if not 0 <= index < self.frames:
            raise IndexError(f"the demo drive has frame sets 0 to {self.frames - 1}, not {index}")
        with self._lock:  # one render at a time; a second asker waits for the first and finds it cached
            if index not in self._cache:
                if self._world is None:
                    self._world = SyntheticWorld(world_seed(DEMO_SEED, 0))
                (frame,) = iter_drive(self.rig, self._world, self.plan, seed=DEMO_SEED, scale=self.scale, indices=[index])
                message: dict[str, Any] = {
                    "index": index,
                    "count": self.frames,
                    "stamp": frame.timestamp_s,
                    "images": dict(frame.frame_set.jpeg),
                }
                self._cache[index] = msgpack.packb(message, use_bin_type=True)
            return self._cache[index]
