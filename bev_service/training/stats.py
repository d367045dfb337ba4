"""Size and speed of a network: parameters, multiply-accumulates, latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bev_service.runtime.enet import ENet


def count_params_macs(model: ENet, input_size_hw: tuple[int, int]) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one (1, 3, H, W) image (Torch-Pruning's op counter)."""
    import torch_pruning as tp

    device = next(model.parameters()).device
    example = torch.zeros((1, model.in_channels, *input_size_hw), device=device)
    was_training = model.training
    macs, params = tp.utils.count_ops_and_params(model.eval(), example)
    model.train(was_training)
    return int(params), int(macs)


def latency_ms(run: Callable[[], Any], *, repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median and spread of ``run()``'s wall time in milliseconds (CUDA work is waited for)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - began) * 1000.0)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(times[0], 2),
        "max_ms": round(times[-1], 2),
        "repeats": repeats,
    }
