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

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F  # noqa: N812 (the PyTorch convention)
from tqdm import tqdm

from bev_service.model.backends import TorchSegmenter, default_device
from bev_service.model.config import FOCUS_UNITS, RESUMABLE_CHANGES, SETTINGS_BEFORE_THEY_EXISTED, ModelConfig, TrainConfig
from bev_service.model.data import FrameSource
from bev_service.model.enet import ENet, network_input, placed
from bev_service.model.evaluate import IGNORE, evaluate
from bev_service.model.plot import Series, plot_training
from bev_service.model.prior import correct_prior
from bev_service.model.weights import ModelError, read_payload, save_model

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
    pixels, so uniform crops would show them a few times per hundred steps. With ``focus_unit`` "pixel"
    every pixel of the class is equally likely, so a near pole of 2,000 pixels draws 100 times the crops
    of a far one of 20; with "object", a connected region of the class (8-connected) is drawn first,
    then a pixel in it, so every object gets the same share (it scored lower: models/README.md).
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
        focus_unit: str = "pixel",
    ) -> None:
        if len(source) == 0:
            raise ValueError("no training frame sets")
        if focus_unit not in FOCUS_UNITS:
            raise ValueError(f"focus_unit must be one of {FOCUS_UNITS}, got {focus_unit!r}")
        self.source, self.batch_size, self.crop, self.seed = source, batch_size, crop_size_hw, seed
        self.focus, self.focus_ids, self.per_object = focus, focus_ids, focus_unit == "object"

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
        if self.per_object:
            count, regions = cv2.connectedComponents(target.astype(np.uint8), connectivity=8)  # 0 is the rest
            target = regions == int(rng.integers(1, count))
        rows, cols = np.nonzero(target)
        pick = int(rng.integers(rows.size))
        jitter_r, jitter_c = rng.integers(-(ch // 4), ch // 4 + 1), rng.integers(-(cw // 4), cw // 4 + 1)
        top = int(np.clip(rows[pick] - ch // 2 + jitter_r, 0, h - ch))
        left = int(np.clip(cols[pick] - cw // 2 + jitter_c, 0, w - cw))
        return top, left


def focus_ids(config: TrainConfig, class_names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(class_names.index(name) for name in config.focus_class_names)


def augment(images: NDArray[np.uint8], labels: NDArray[np.uint8], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, H, W, 3) and (B, H, W) to float (B, 3, H, W) in [0, 1] and int64 (B, H, W) targets.

    Photometric changes stand in for the lighting and sensor differences between cameras; the
    mirror keeps labels valid because every class is symmetric under it.
    """
    b = images.shape[0]
    x = network_input(torch.from_numpy(images))  # (B, 3, H, W)
    y = torch.from_numpy(labels).long()  # (B, H, W)
    flip = torch.from_numpy(rng.random(b) < 0.5)
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)

    def per_sample(lo: float, hi: float, channels: int = 1) -> torch.Tensor:
        return torch.from_numpy(rng.uniform(lo, hi, size=(b, channels, 1, 1)).astype(np.float32))

    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = (x - mean) * per_sample(0.7, 1.3) + mean  # contrast
    x = x * per_sample(0.7, 1.3) * per_sample(0.9, 1.1, channels=3)  # brightness, colour gain
    x = x.clamp(0.0, 1.0) ** per_sample(0.8, 1.25)  # gamma
    noise = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32)) * per_sample(0.0, 0.03)
    return (x + noise).clamp(0.0, 1.0), y


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, *, top_k: int = 32768) -> torch.Tensor:
    """The Lovász-softmax loss (Berman et al., CVPR 2018, arXiv:1705.08790): a convex surrogate of
    1 - IoU per class, averaged over the classes ``target`` holds, over the whole batch.

    Per class, the pixels' errors |fg - p| are sorted in decreasing order, and each is weighted by how
    much it adds to the Jaccard loss of the sorted prefix, so the gradient pushes the pixels that cost
    IoU (a thin class's few pixels weigh as much as a wide one's many). Only the ``top_k`` largest
    errors per class are sorted: a full sort of a batch's 8 x 393,216 errors takes 130 ms on 2 cores, a
    partial one of 32,768 per class about half that; with it a fine-tuning step is 20% slower. The weights
    of the kept pixels are exact (the prefix sums count every ground-truth pixel); the dropped tail holds
    the smallest errors. ``IGNORE`` pixels take no part.

    ``logits`` (B, C, H, W) float; ``target`` (B, H, W) int64 class ids or IGNORE.
    """
    c = logits.shape[1]
    probs = F.softmax(logits, dim=1).transpose(0, 1).reshape(c, -1)  # (C, P)
    t = target.reshape(1, -1)  # (1, P)
    fg = (t == torch.arange(c, device=t.device).reshape(c, 1)).to(probs.dtype)  # (C, P)
    gts = fg.sum(dim=1)  # (C,)
    errors = torch.where(t != IGNORE, (fg - probs).abs(), -1.0)  # ignored pixels sort last
    top, order = errors.topk(min(top_k, errors.shape[1]), dim=1)  # (C, K), decreasing
    fg_top = fg.gather(1, order)
    neg_top = (top >= 0).to(probs.dtype) - fg_top  # valid background pixels of the class
    intersection = gts[:, None] - fg_top.cumsum(dim=1)
    union = gts[:, None] + neg_top.cumsum(dim=1)
    jaccard = 1.0 - intersection / union.clamp_min(1.0)  # (C, K): the loss of each sorted prefix
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    per_class = (top.clamp_min(0.0) * grad).sum(dim=1)  # (C,)
    present = gts > 0
    return per_class[present].mean() if bool(present.any()) else logits.sum() * 0.0


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

    With ``config.lovasz`` > 0 the loss adds that weight times the Lovász-softmax loss, which trains for
    IoU itself (it did not help here: models/README.md). With a ``teacher`` (pruning's fine-tuning), the
    loss mixes the class-weighted cross-entropy with the teacher's softened per-pixel distribution
    (knowledge distillation, Hinton et al. 2015): ``(1 - distill) * CE + distill * T^2 * KL(teacher_T || student_T)``.
    """

    def __init__(
        self,
        model: ENet,
        sampler: BatchSampler,
        weights: torch.Tensor,
        config: TrainConfig,
        total_steps: int,
        *,
        teacher: ENet | None = None,
        distill: float = 0.0,
        temperature: float = 2.0,
    ) -> None:
        self.device = default_device()
        self.model = placed(model, self.device)
        self.sampler = sampler
        self.weights = weights.to(self.device)
        self.config = config
        self.total_steps = total_steps
        self.teacher = placed(teacher, self.device).eval() if teacher is not None else None
        self.distill, self.temperature = (distill if teacher is not None else 0.0), temperature
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
        x, y = augment(images, labels, rng)
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        y = y.to(self.device)
        torch.manual_seed(int(rng.integers(1 << 62)))  # dropout masks, so that a resumed run repeats them
        self.model.train()
        with self._autocast():
            logits = self.model(x).float()  # (B, C, H, W)
        loss = F.cross_entropy(logits, y, weight=self.weights, ignore_index=IGNORE)
        if self.config.lovasz > 0:
            loss = loss + self.config.lovasz * lovasz_softmax(logits, y)
        if self.teacher is not None and self.distill > 0:
            with torch.no_grad(), self._autocast():
                soft = self.teacher(x).float()  # (B, C, H, W)
            t = self.temperature
            kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(soft / t, dim=1), log_target=True, reduction="none")
            kd = kl.sum(dim=1)[y != IGNORE].mean() * t * t
            loss = (1.0 - self.distill) * loss + self.distill * kd
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
    saved = {**SETTINGS_BEFORE_THEY_EXISTED, **saved}
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
    start, payload = _start_state(config)
    weights = (
        payload["class_weights"] if payload else class_weights(train_source, model_config.num_classes, c=config.class_weight_c)
    )
    model = model_config.build()
    sampler = BatchSampler(
        train_source,
        config.batch_size,
        config.crop_size_hw,
        config.seed,
        focus=config.focus,
        focus_ids=focus_ids(config, model_config.class_names),
        focus_unit=config.focus_unit,
    )
    trainer = Trainer(model, sampler, weights, config, total_steps=config.steps)
    if payload:
        model.load_state_dict(payload["model"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
        log.info("resuming %s at step %d of %d", out, start, config.steps)
    log.info(
        "class weights: %s", ", ".join(f"{n}={w:.2f}" for n, w in zip(model_config.class_names, weights.tolist(), strict=True))
    )
    metrics = MetricsLog(out / "metrics.jsonl", start if payload else None)
    final = _loop(trainer, model_config, val_source, metrics, start) or validate(trainer.model, model_config, val_source)
    info: dict[str, Any] = {"train_config": asdict(config), "validation": final, "steps": config.steps}
    model = placed(trainer.model, "cpu", channels_last=False)
    if config.prior_correction:  # the checkpoint keeps the uncorrected network, so a resumed run trains on from it
        info["prior_correction"] = correct_prior(model, trainer.weights.cpu(), val_source)
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
