"""Structured L1-norm channel pruning with fine-tuning between steps (Torch-Pruning, DepGraph).

How to run:

    bev prune --model build/train/model.pt --out build/prune/model.pt --ratio 0.4

Torch-Pruning (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023) groups the
layers whose channels must go together (a residual trunk, a conv with its batch norm and its
consumer) and ranks each group's channels by the L1 norm of their weights (``GroupMagnitudeImportance(p=1)``).
``iterative_steps`` steps each remove a further share of every group up to ``ratio`` (but the groups of the
layers named in ``keep``), with channel counts rounded down to multiples of 8 (never below 8), and fine-tune in
between (``final_finetune_steps`` more after the last step) on the class-weighted loss, with the settings of
``PruneConfig.finetune_config``.
The class head is kept; the prior correction (``prior.py``) is chosen again at the end. The pruned
channel table goes into the model config, so the pruned network reloads from a weights-only file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from tqdm import tqdm

from bev_service.errors import ModelError
from bev_service.runtime.enet import ConvBN, ENet, on_device
from bev_service.runtime.model_config import ModelConfig
from bev_service.runtime.torch_backend import TorchSegmenter
from bev_service.runtime.weights import load_model, save_model
from bev_service.training.config import PruneConfig
from bev_service.training.data import FrameSource
from bev_service.training.evaluate import evaluate
from bev_service.training.prior import correct_prior
from bev_service.training.stats import count_params_macs, latency_ms
from bev_service.training.train import BatchSampler, Trainer, body_rule, class_weights, focus_ids

log = logging.getLogger(__name__)

ROUND_TO = 8


class KeepingPruner(tp.pruner.BasePruner):
    """BasePruner that never empties a layer: rounding down to a multiple of ``round_to`` would
    remove all of a 16-channel layer at ratios above 0.5 (Torch-Pruning 1.6.1's ``_round_to``)."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        n = super()._round_to(n_pruned, current_channels, round_to)
        return max(0, min(int(n), current_channels - round_to))


def kept_layers(model: ENet, names: str) -> list[nn.Module]:
    """The convolutions of the comma-separated layer ``names`` ("initial", "stage1.0.reduce"): pruning leaves their
    output channels, and every channel tied to them (a residual trunk, a skip), at full width."""
    modules = dict(model.named_modules())
    kept: list[nn.Module] = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        module = modules.get(name)
        conv = getattr(module, "conv", module)
        if not isinstance(conv, nn.Conv2d | nn.ConvTranspose2d):
            layers = [n for n, m in modules.items() if isinstance(m, ConvBN)]
            raise ModelError(f"cannot keep {name!r}: not a convolution of the network (its layers: {', '.join(layers)})")
        kept.append(conv)
    return kept


def prune_network(
    model: ENet,
    input_size_hw: tuple[int, int],
    *,
    ratio: float,
    iterative_steps: int,
    after_step: Callable[[int], None],
    keep: Sequence[nn.Module] = (),
) -> ENet:
    """Prune ``model`` in place in ``iterative_steps`` steps, calling ``after_step(k)`` after each; the layers ``keep``
    (``kept_layers``) and the class head keep their channels."""
    device = next(model.parameters()).device
    example = torch.zeros((1, model.in_channels, *input_size_hw), device=device)
    pruner = KeepingPruner(
        model.eval(),
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=ratio,
        iterative_steps=iterative_steps,
        round_to=ROUND_TO,
        ignored_layers=[model.head, *keep],
    )
    for k in range(iterative_steps):
        pruner.step()
        log.info("pruning step %d/%d: %s", k + 1, iterative_steps, _describe(model, input_size_hw))
        after_step(k)
    return model


def _describe(model: ENet, input_size_hw: tuple[int, int]) -> str:
    params, macs = count_params_macs(model, input_size_hw)
    return f"{params / 1e3:.1f} k parameters, {macs / 1e9:.3f} GMACs per image"


def measure(model: ENet, config: ModelConfig, val_source: FrameSource | None, *, batch: int, repeats: int) -> dict[str, Any]:
    """Parameters, MACs per image, CPU latency of one ``batch``-image batch, and validation mIoU."""
    params, macs = count_params_macs(model, config.input_size_hw)
    segmenter = TorchSegmenter(model, config, device="cpu")
    images = np.zeros((batch, *config.input_size_hw, 3), dtype=np.uint8)
    out: dict[str, Any] = {
        "params": params,
        "macs": macs,
        "cpu_latency": latency_ms(lambda: segmenter.segment(images), repeats=repeats),
    }
    if val_source is not None:
        image = evaluate(segmenter, val_source).report()["image"]
        out.update(miou=image["miou"], iou=image["iou"])
    return out


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Ratios unpruned / pruned, and the mIoU lost (a fraction, positive when pruning lost quality)."""
    out = {
        "macs_ratio": round(before["macs"] / after["macs"], 3),
        "params_ratio": round(before["params"] / after["params"], 3),
        "cpu_speedup": round(before["cpu_latency"]["median_ms"] / after["cpu_latency"]["median_ms"], 3),
    }
    if before.get("miou") is not None and after.get("miou") is not None:
        out["miou_drop"] = round(before["miou"] - after["miou"], 4)
    return out


def run_pruning(config: PruneConfig, train_source: FrameSource, val_source: FrameSource | None) -> dict[str, Any]:
    """Load, measure, prune with fine-tuning, measure again, save the pruned model and its report."""
    if config.threads:
        torch.set_num_threads(config.threads)
    loaded = load_model(config.model)
    if loaded.info.get("pruned_from"):
        log.warning("%s is already pruned; pruning it further", config.model)
    model, model_config = loaded.model, loaded.config
    if model_config.folded_classes != config.folded_classes:  # the fine-tuning must teach the classifier's every channel
        raise ModelError(
            f"{config.model} has training-only classes {list(model_config.folded_classes)}, but --body {config.body} "
            f"teaches {list(config.folded_classes)}: prune with the --body it was trained with"
        )
    keep = kept_layers(model, config.keep)
    train_source = body_rule(config, train_source)
    val_source = None if val_source is None else body_rule(config, val_source)
    before = measure(model, model_config, val_source, batch=config.latency_batch, repeats=config.latency_repeats)
    finetune = config.finetune_config()
    weights = class_weights(train_source, model_config.head_classes, c=finetune.class_weight_c)
    ids = focus_ids(finetune, model_config.class_names)

    steps_run: list[int] = []

    def after_step(k: int) -> None:
        seed = config.seed * 1000 + k + 1
        crop = finetune.crop_size_hw
        sampler = BatchSampler(train_source, finetune.batch_size, crop, seed, focus=finetune.focus, focus_ids=ids)
        last = k == config.iterative_steps - 1
        total = config.finetune_steps + (config.final_finetune_steps if last else 0)
        trainer = Trainer(model, sampler, weights, finetune, total_steps=total)
        steps = tqdm(range(total), desc=f"fine-tune {k + 1}", unit="step", disable=not config.progress)
        losses = [trainer.step(i) for i in steps]
        steps_run.append(len(losses))
        if losses:
            log.info("fine-tuned %d steps: loss %.3f -> %.3f", len(losses), np.mean(losses[:10]), np.mean(losses[-10:]))
        on_device(model, "cpu", channels_last=False).eval()

    prune_network(
        model,
        model_config.input_size_hw,
        ratio=config.ratio,
        iterative_steps=config.iterative_steps,
        after_step=after_step,
        keep=keep,
    )
    pruned_config = model_config.with_channels(model)
    prior = None
    if config.prior_correction and val_source is not None:
        prior = correct_prior(model, weights, val_source, size_hw=pruned_config.input_size_hw)
    after = measure(model, pruned_config, val_source, batch=config.latency_batch, repeats=config.latency_repeats)
    report = {"config": asdict(config), "before": before, "after": after, **compare(before, after)}
    report.update(finetune_steps_run=steps_run, prior_correction=prior)
    out = Path(config.out)
    save_model(out, model, pruned_config, {**loaded.info, "pruned_from": str(config.model), "prune_report": report})
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s: %.2fx fewer MACs, %.2fx faster on CPU", out, report["macs_ratio"], report["cpu_speedup"])
    return report
