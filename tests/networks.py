"""Tiny networks and procedural frame sets: small enough that every model test runs in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bev_service.classes import CLASSES, palette
from bev_service.cli.main import main
from bev_service.runtime.enet import ENet
from bev_service.runtime.model_config import ModelConfig
from bev_service.training.data import ArraySource, FrameSet

TINY_SIZE_HW = (64, 96)  # keeps the default rig's 2:3 aspect ratio, so it warps through its tables
TINY = ModelConfig(width=0.25, input_size_hw=TINY_SIZE_HW)


def tiny_model(seed: int = 0, config: ModelConfig = TINY) -> ENet:
    torch.manual_seed(seed)
    return config.build().eval()


def procedural_frame_set(rng: np.random.Generator, cameras: int = 4, size_hw: tuple[int, int] = TINY_SIZE_HW) -> FrameSet:
    """Rectangles of random classes over road, each drawn in its class colour with noise: a task a
    tiny network learns in a few dozen steps."""
    h, w = size_hw
    labels = np.full((cameras, h, w), CLASSES[1].id, dtype=np.uint8)
    for cam in range(cameras):
        for _ in range(6):
            top, left = rng.integers(0, h - 8), rng.integers(0, w - 8)
            tall, wide = rng.integers(4, h // 2), rng.integers(4, w // 2)
            labels[cam, top : top + tall, left : left + wide] = rng.integers(0, len(CLASSES))
    images = palette()[labels].astype(np.float32) + rng.normal(0, 12, size=(cameras, h, w, 3))
    return FrameSet(images=np.clip(images, 0, 255).astype(np.uint8), labels=labels, name=f"procedural-{rng.integers(1 << 30)}")


def procedural_source(count: int, seed: int = 0, size_hw: tuple[int, int] = TINY_SIZE_HW) -> ArraySource:
    rng = np.random.default_rng(seed)
    return ArraySource([procedural_frame_set(rng, size_hw=size_hw) for _ in range(count)])


def random_images(count: int = 2, size_hw: tuple[int, int] = TINY_SIZE_HW, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *size_hw, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_weights: Path) -> Path:
    """The tiny model exported once per session through ``bev export`` (the export takes seconds),
    with the confidence output and the ORT-against-torch check."""
    out = tiny_weights.with_suffix(".onnx")
    assert main(["export", "--model", str(tiny_weights), "--out", str(out), "--confidence"]) == 0
    return out


@pytest.fixture(autouse=True)
def one_torch_thread() -> object:
    """Tiny networks gain nothing from threads, and on a shared 2-core machine the thread pool's
    spinning costs several times the work itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
