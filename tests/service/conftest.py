"""Real servers for the service tests: ``create_app(Settings(...))`` under uvicorn in a thread, on a
loopback socket bound before the server starts (port 0: no race for a free port), handed to a test
once ``/readyz`` says the model is loaded, the tables built and the network warmed up.

``make_server(**overrides)`` starts one with any ``Settings`` field changed (a token, a small queue,
a small body limit); it is stopped when the test module ends. ``server`` is the session's plain one:
a tiny untrained network on the default rig. Frame sets are rendered once per session from the
synthetic world at half the rig's image size (480x320, a whole factor, so the service's tables scale).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from bev_service.geometry.rig import Rig
from bev_service.runtime.model_config import ModelConfig
from bev_service.runtime.weights import save_model
from bev_service.service.settings import Settings
from bev_service.synth import RenderedFrameSet, SyntheticWorld, render_frame_set
from tests.conftest import DEFAULT_RIG
from tests.live_server import LiveServer, running_server
from tests.networks import tiny_model

FRAME_SCALE = 0.5  # 960x640 calibrated -> 480x320 sent
FRAME_SIZE_HW = (320, 480)
# A network whose input is the frame size itself: its label maps need no resampling before the
# warp, so fusion-only grids must equal the synthetic world's oracle BEV; and it is slow enough
# (~0.15 s per frame set here) to overload a one-slot queue.
WIDE = ModelConfig(width=0.25, input_size_hw=FRAME_SIZE_HW)

Files = dict[str, tuple[str, bytes, str]]


# -- weights, settings, servers ---------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The networks here are tiny; on a shared 2-core machine torch's thread pool costs more than it saves.
    The servers run in this process, so this is their thread count too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def wide_weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained network whose input is the 480x320 frame size (see ``WIDE``)."""
    path = tmp_path_factory.mktemp("service-weights") / "wide.pt"
    save_model(path, tiny_model(config=WIDE), WIDE, {"note": "untrained, input at the test frame size"})
    return path


@pytest.fixture(scope="session")
def settings_for(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Settings]:
    """``settings_for(**overrides)``: the tiny network on CPU, the default rig, a fresh rigs_dir."""

    def make(**overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "model": tiny_weights,
            "backend": "torch",
            "device": "cpu",
            "rig": DEFAULT_RIG,
            "rigs_dir": tmp_path_factory.mktemp("rigs"),
            "demo_frames": 2,
            "demo_scale": 0.25,
            "log_level": "warning",
        }
        return Settings(**{**fields, **overrides})

    return make


@pytest.fixture(scope="module")
def make_server(settings_for: Callable[..., Settings]) -> Iterator[Callable[..., LiveServer]]:
    """``make_server(**overrides)``: a running server with those settings, stopped at the end of the module."""
    with ExitStack() as stack:

        def make(**overrides: Any) -> LiveServer:
            return stack.enter_context(running_server(settings_for(**overrides)))

        yield make


@pytest.fixture(scope="session")
def server(settings_for: Callable[..., Settings]) -> Iterator[LiveServer]:
    """The session's plain server: tiny network, default rig, default limits, no token."""
    with running_server(settings_for()) as live:
        yield live


def overload_rejections(live: LiveServer) -> float:
    """The service's count of requests refused as overloaded (``bev_overload_rejections_total``)."""
    text = httpx.get(live.url("/metrics")).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("bev_overload_rejections_total "))


# -- frame sets -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def default_rig(rig: Rig) -> Rig:
    return rig


def render_frame_sets(rig: Rig, count: int, *, world_seed: int = 3) -> list[RenderedFrameSet]:
    """``count`` frame sets at distinct poses of one world, at half the rig's image size."""
    world = SyntheticWorld(world_seed)
    rng = np.random.default_rng(world_seed)
    return [render_frame_set(rig, world, world.sample_pose(rng), scale=FRAME_SCALE, seed=i) for i in range(count)]


@pytest.fixture(scope="session")
def frame_sets(default_rig: Rig) -> list[RenderedFrameSet]:
    """Two rendered frame sets of the default rig (the renderer's ray tables take seconds: once per session)."""
    return render_frame_sets(default_rig, 2)


@pytest.fixture(scope="session")
def frame_set(frame_sets: list[RenderedFrameSet]) -> RenderedFrameSet:
    return frame_sets[0]


def label_png(labels: np.ndarray) -> bytes:
    """(h, w) class ids as an 8-bit grey PNG (lossless: the ids survive)."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def as_files(parts: Mapping[str, bytes], suffix: str = "jpg", media_type: str = "image/jpeg") -> Files:
    """Camera name to bytes, as httpx multipart files (the field named after the camera)."""
    return {name: (f"{name}.{suffix}", data, media_type) for name, data in parts.items()}


@pytest.fixture(scope="session")
def image_files(frame_set: RenderedFrameSet) -> Files:
    """The frame set's JPEGs as a multipart form."""
    return as_files(frame_set.jpeg)


@pytest.fixture(scope="session")
def label_files(frame_set: RenderedFrameSet) -> Files:
    """The frame set's true per-camera label maps as PNGs in a multipart form (for labels=true)."""
    return as_files({name: label_png(frame_set.labels[name]) for name in frame_set.camera_names}, "png", "image/png")
