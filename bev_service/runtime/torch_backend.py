"""The PyTorch backend: eager on CUDA when present, else on the CPU; the argmax on that device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bev_service.classes import CLASS_NAMES
from bev_service.runtime.enet import ENet, fold_batch_norms, network_input
from bev_service.runtime.model_config import ModelConfig
from bev_service.runtime.segmenter import Segmentation, Segmenter, check_batch
from bev_service.runtime.weights import load_model


class ArgmaxNet(nn.Module):
    """A network with its input conversion and its argmax head: what runs inside a backend.

    uint8 (N, H, W, 3) -> labels uint8 (N, H, W) [, confidence float32 (N, H, W)].
    """

    def __init__(self, net: ENet, *, with_confidence: bool = False) -> None:
        super().__init__()
        self.net = net
        self.with_confidence = with_confidence

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.from_float(network_input(images))

    def from_float(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)  # (N, C, H, W)
        labels = logits.argmax(dim=1).to(torch.uint8)  # (N, H, W)
        if not self.with_confidence:
            return labels
        # max softmax = 1 / sum(exp(l - max l)): no (N, C, H, W) probability tensor is kept.
        top = logits.amax(dim=1, keepdim=True)  # (N, 1, H, W)
        confidence = torch.reciprocal(torch.exp(logits - top).sum(dim=1))  # (N, H, W)
        return labels, confidence


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchSegmenter(Segmenter):
    """PyTorch eager; the device is CUDA when available unless given.

    Runs a copy of the model with its batch norms folded into the convolutions (``fold_batch_norms``):
    later changes to ``model`` do not reach the segmenter. A uint8 (N, H, W, 3) batch permuted to
    (N, 3, H, W) is channels-last already, so oneDNN runs the convolutions in its native layout.
    """

    def __init__(self, model: ENet, config: ModelConfig, *, device: str | torch.device | None = None) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        self.backend = f"torch-{self.device.type}"
        model = fold_batch_norms(model).to(self.device)
        self._plain = ArgmaxNet(model).eval()
        self._with_confidence = ArgmaxNet(model, with_confidence=True).eval()

    @classmethod
    def from_file(
        cls, path: str | Path, *, device: str | torch.device | None = None, classes: tuple[str, ...] | None = CLASS_NAMES
    ) -> TorchSegmenter:
        loaded = load_model(path, classes=classes)
        return cls(loaded.model, loaded.config, device=device)

    @torch.inference_mode()
    def segment(self, batch: Any, *, confidence: bool = False) -> Segmentation:
        check_batch(batch)
        head = self._with_confidence if confidence else self._plain
        x = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
        x = x.to(self.device, non_blocking=True)
        out = head.from_float(x) if x.is_floating_point() else head(x)
        if isinstance(out, tuple):
            return Segmentation(labels=out[0], confidence=out[1])
        return Segmentation(labels=out)
