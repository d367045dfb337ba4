"""Training the segmentation network on synthetic surround-view frame sets.

How to run (a fresh run, then the same command again with ``--resume`` after an interruption):

    bev train --out build/train --data synth --steps 4000
    bev train --out build/train --data build/synth --resume

Every step draws ``batch_size`` camera images from random frame sets (a random crop of each when
``crop_*`` is set: the network is fully convolutional and crops keep the pixel scale), augments them
(mirror, brightness, contrast, gamma, colour gain, noise) and takes one AdamW step on class-weighted
cross-entropy. The draw of step ``k`` depends only on ``(seed, k)``, so a resumed run sees the same
data as an uninterrupted one. Outputs in ``out_dir``: ``checkpoint.pt`` (resumable, holds its config),
``metrics.jsonl``, ``curves.png`` and the final ``model.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F  # noqa: N812 (the PyTorch convention)
from tqdm import tqdm

from bev_service.classes import CLASS_IDS
from bev_service.errors import ModelError
from bev_service.runtime.enet import ENet, on_device
from bev_service.runtime.model_config import ModelConfig
from bev_service.runtime.torch_backend import TorchSegmenter, default_device
from bev_service.runtime.weights import read_payload, save_model
from bev_service.training.augment import AugmentConfig, augment
from bev_service.training.config import REMOVED_SETTINGS, RESUMABLE_CHANGES, RunConfig, TrainConfig
from bev_service.training.data import IGNORE, BodyLabelled, FrameSource
from bev_service.training.evaluate import evaluate
from bev_service.training.plot import Series, plot_training
from bev_service.training.prior import correct_prior

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "bev-service/train-checkpoint"


def class_weights(source: FrameSource, num_classes: int, *, c: float = 1.02, max_frame_sets: int = 64) -> torch.Tensor:
    """ENet's weights 1 / ln(c + p) from the class frequencies p of up to ``max_frame_sets`` frame sets:
    rare thin classes (lane markings, pedestrians) weigh up to 1 / ln(c) ~ 50 times, common ones ~ 1.5."""
    counts = np.zeros(num_classes, dtype=np.float64)
    step = max(1, len(source) // max_frame_sets)
    for i in range(0, len(source), step):
        labels = source[i].labels
        counts += np.bincount(labels[labels < num_classes].ravel(), minlength=num_classes)[:num_classes]
    p = counts / max(counts.sum(), 1.0)
    return torch.tensor(1.0 / np.log(c + p), dtype=torch.float32)


class BatchSampler:
    """Step ``k``'s batch: random cameras of random frame sets, randomly cropped; deterministic in (seed, k).

    With ``focus`` > 0, that share of the crops is centred (with up to a quarter crop of jitter) on a random
    pixel of a random ``focus_ids`` class the image shows: pedestrians and cones cover 0.1-0.3% of the
    pixels, so uniform crops would show them a few times per hundred steps. Every pixel of the class is
    equally likely, so a near pole of 2,000 pixels draws 100 times the crops of a far one of 20 (drawing
    per object instead scored lower: docs/tried.md).
    """

    def __init__(
        self,
        source: FrameSource,
        batch_size: int,
        crop_size_hw: tuple[int, int] | None,
        seed: int,
        *,
        focus: float = 0.0,
        focus_ids: tuple[int, ...] = (),
    ) -> None:
        if len(source) == 0:
            raise ValueError("no training frame sets")
        self.source, self.batch_size, self.crop, self.seed = source, batch_size, crop_size_hw, seed
        self.focus, self.focus_ids = focus, focus_ids

    def batch(self, step: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8], np.random.Generator]:
        rng = np.random.default_rng([self.seed, step])
        images, labels = [], []
        for index in rng.integers(len(self.source), size=self.batch_size):
            frame_set = self.source[int(index)]
            cam = int(rng.integers(frame_set.images.shape[0]))
            image, label = frame_set.images[cam], frame_set.labels[cam]
            if self.crop is not None:
                ch, cw = min(self.crop[0], image.shape[0]), min(self.crop[1], image.shape[1])
                top, left = self._corner(label, ch, cw, rng)
                image, label = image[top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]
            images.append(image)
            labels.append(label)
        return np.stack(images), np.stack(labels), rng

    def _corner(self, label: NDArray[np.uint8], ch: int, cw: int, rng: np.random.Generator) -> tuple[int, int]:
        """The crop's top-left corner: uniform, or around a focus-class pixel."""
        h, w = label.shape
        focused = self.focus_ids and rng.random() < self.focus
        present = [c for c in self.focus_ids if focused and (label == c).any()]
        if not present:
            return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        target = label == present[int(rng.integers(len(present)))]  # (H, W) bool
        rows, cols = np.nonzero(target)
        pick = int(rng.integers(rows.size))
        jitter_r, jitter_c = rng.integers(-(ch // 4), ch // 4 + 1), rng.integers(-(cw // 4), cw // 4 + 1)
        top = int(np.clip(rows[pick] - ch // 2 + jitter_r, 0, h - ch))
        left = int(np.clip(cols[pick] - cw // 2 + jitter_c, 0, w - cw))
        return top, left


def body_rule(config: RunConfig, source: FrameSource) -> FrameSource:
    """``source`` as ``config.body`` has the loss and the validation see the vehicle's body."""
    if config.body == "background":  # as rendered
        return source
    if config.body == "separate":  # the first folded class, the channel after the output classes
        return BodyLabelled(source, len(CLASS_IDS))
    return BodyLabelled(source, IGNORE if config.body == "ignore" else CLASS_IDS[config.body])


def focus_ids(config: RunConfig, class_names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(class_names.index(name) for name in config.focus_class_names)


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 1% of ``base_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


class Trainer:
    """One optimiser over one model; ``step(k)`` trains on batch ``k`` and returns its loss.

    The model and its batches are channels-last (NHWC, oneDNN's native layout), and with ``precision``
    "bf16" the forward pass runs under bfloat16 autocast (the loss and the weights stay float32): 1.4x
    faster steps on this machine's CPU, which has AMX and AVX512-BF16 (240 against 335 ms per step).
    The loss is the class-weighted cross-entropy alone (a Lovász-softmax term and distillation from the
    unpruned network when fine-tuning a pruned one did not help: docs/tried.md).
    """

    def __init__(
        self,
        model: ENet,
        sampler: BatchSampler,
        weights: torch.Tensor,
        config: TrainConfig,
        total_steps: int,
    ) -> None:
        self.device = default_device()
        self.model = on_device(model, self.device)
        self.sampler = sampler
        self.weights = weights.to(self.device)
        self.config = config
        self.augment_config = AugmentConfig.preset(config.augment)
        self.total_steps = total_steps
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]  # biases, norms, PReLU slopes
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def step(self, step: int) -> float:
        lr = lr_at(step, base_lr=self.config.lr, warmup_steps=self.config.warmup_steps, total_steps=self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels, rng = self.sampler.batch(step)
        x, y = augment(images, labels, rng, self.augment_config)
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        y = y.to(self.device)
        torch.manual_seed(int(rng.integers(1 << 62)))  # dropout masks, so that a resumed run repeats them
        self.model.train()
        with self._autocast():
            logits = self.model.head_logits(x).float()  # (B, C, H, W), the training-only classes too
        loss = F.cross_entropy(logits, y, weight=self.weights, ignore_index=IGNORE)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def validate(model: ENet, model_config: ModelConfig, source: FrameSource) -> dict[str, Any]:
    """Image-space figures on the validation frame sets (the model is left in eval mode)."""
    device = next(model.parameters()).device
    return evaluate(TorchSegmenter(model, model_config, device=device), source).report()["image"]


def _checkpoint_path(config: TrainConfig) -> Path:
    return Path(config.out_dir) / "checkpoint.pt"


def save_checkpoint(trainer: Trainer, model_config: ModelConfig, step: int) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "train_config": json.dumps(asdict(trainer.config)),
        "model_config": json.dumps(model_config.with_channels(trainer.model).to_dict()),
        "step": step,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "class_weights": trainer.weights.cpu(),
    }
    target = _checkpoint_path(trainer.config)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(target)


def load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint's payload, after checking it was written by a run with the same settings."""
    payload = read_payload(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not a training checkpoint (format {payload.get('format')!r})")
    saved = json.loads(payload["train_config"])
    removed = {k: v for k, v in saved.items() if k in REMOVED_SETTINGS and v != REMOVED_SETTINGS[k]}
    if removed:
        raise ModelError(f"{path}: trained with settings no longer supported ({removed}); use another --out-dir")
    changed = {k for k, v in asdict(config).items() if saved.get(k) != v} - RESUMABLE_CHANGES
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in sorted(changed))
        raise ModelError(f"{path}: cannot resume with different settings ({diffs}); use another --out-dir")
    return payload


class MetricsLog:
    """Append-only JSON lines; on resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        rows = self.read(path) if resume_step is not None and path.exists() else []
        kept = [r for r in rows if r["step"] <= (resume_step or 0)]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, png: Path) -> None:
        rows = self.read(self.path)
        train = [r for r in rows if "loss" in r]
        val = [r for r in rows if "val_miou" in r and r["val_miou"] is not None]
        loss = Series("loss", [r["step"] for r in train], [r["loss"] for r in train], (180, 80, 20))
        miou = Series("val mIoU", [r["step"] for r in val], [r["val_miou"] for r in val], (40, 40, 200))
        plot_training(png, loss, [miou])


def train(config: TrainConfig, train_source: FrameSource, val_source: FrameSource) -> Path:
    """Run (or resume) training; returns the path of the final model file."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    model_config = config.model_config()
    train_source, val_source = body_rule(config, train_source), body_rule(config, val_source)
    start, payload = _start_state(config)
    weights = (
        payload["class_weights"] if payload else class_weights(train_source, model_config.head_classes, c=config.class_weight_c)
    )
    model = model_config.build()
    sampler = BatchSampler(
        train_source,
        config.batch_size,
        config.crop_size_hw,
        config.seed,
        focus=config.focus,
        focus_ids=focus_ids(config, model_config.class_names),
    )
    trainer = Trainer(model, sampler, weights, config, total_steps=config.steps)
    if payload:
        model.load_state_dict(payload["model"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
        log.info("resuming %s at step %d of %d", out, start, config.steps)
    log.info(
        "class weights: %s",
        ", ".join(
            f"{n}={w:.2f}" for n, w in zip(model_config.class_names + model_config.folded_classes, weights.tolist(), strict=True)
        ),
    )
    metrics = MetricsLog(out / "metrics.jsonl", start if payload else None)
    final = _loop(trainer, model_config, val_source, metrics, start) or validate(trainer.model, model_config, val_source)
    info: dict[str, Any] = {"train_config": asdict(config), "validation": final, "steps": config.steps}
    model = on_device(trainer.model, "cpu", channels_last=False)
    if config.prior_correction:  # the checkpoint keeps the uncorrected network, so a resumed run trains on from it
        info["prior_correction"] = correct_prior(model, trainer.weights.cpu(), val_source, size_hw=model_config.input_size_hw)
        info["validation_before_prior_correction"] = final
        info["validation"] = final = validate(model, model_config, val_source)
    save_model(out / "model.pt", model, model_config, info)
    metrics.plot(out / "curves.png")
    log.info("wrote %s (validation mIoU %s)", out / "model.pt", final["miou"])
    return out / "model.pt"


def _start_state(config: TrainConfig) -> tuple[int, dict[str, Any] | None]:
    path = _checkpoint_path(config)
    if not path.exists():
        return 0, None
    if not config.resume:
        raise ModelError(f"{path} exists: pass --resume to continue that run, or choose another --out-dir")
    payload = load_checkpoint(path, config)
    step = int(payload["step"])
    if step > config.steps:  # its weights went past this run's schedule: resuming would return them as they are
        raise ModelError(f"{path} is at step {step}, beyond --steps {config.steps}; choose another --out-dir")
    return step, payload


def _loop(
    trainer: Trainer, model_config: ModelConfig, val_source: FrameSource, metrics: MetricsLog, start: int
) -> dict[str, Any] | None:
    """Steps ``start`` to the end; returns the last validation figures (None when no step ran)."""
    config = trainer.config
    losses: list[float] = []
    val: dict[str, Any] | None = None
    began = time.perf_counter()
    bar = tqdm(
        range(start, config.steps), initial=start, total=config.steps, desc="train", unit="step", disable=not config.progress
    )
    for step in bar:
        losses.append(trainer.step(step))
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            row = {"step": done, "loss": float(np.mean(losses)), "lr": trainer.optimizer.param_groups[0]["lr"]}
            metrics.write({**row, "elapsed_s": round(time.perf_counter() - began, 1)})
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            losses.clear()
        if done % config.eval_every == 0 or done == config.steps:
            val = validate(trainer.model, model_config, val_source)
            metrics.write({"step": done, "val_miou": val["miou"], "val_iou": val["iou"]})
            metrics.plot(Path(config.out_dir) / "curves.png")
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(trainer, model_config, done)
    return val
