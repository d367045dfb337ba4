"""Training: a short run lowers the loss; checkpoints resume; metrics, curves and the model file appear."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bev_service.classes import CLASSES
from bev_service.model.config import ModelConfig, PruneConfig, TrainConfig
from bev_service.model.data import ArraySource, FrameSet
from bev_service.model.evaluate import IGNORE
from bev_service.model.train import BatchSampler, Trainer, augment, class_weights, focus_ids, lovasz_softmax, lr_at, train
from bev_service.model.weights import CLASS_NAMES, ModelError, load_model
from tests.model.conftest import TINY_SIZE_HW, procedural_source

PEDESTRIAN = CLASS_NAMES.index("pedestrian")


def tiny_run(out_dir: Path, **overrides: object) -> TrainConfig:
    base = TrainConfig(
        out_dir=str(out_dir),
        width=0.25,
        input_height=TINY_SIZE_HW[0],
        input_width=TINY_SIZE_HW[1],
        crop_height=0,
        crop_width=0,
        batch_size=8,
        steps=40,
        lr=1e-2,
        warmup_steps=5,
        eval_every=20,
        checkpoint_every=20,
        log_every=5,
        progress=False,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_short_run_lowers_the_loss_and_writes_its_outputs(tmp_path: Path) -> None:
    config = tiny_run(tmp_path)
    model_path = train(config, procedural_source(12, seed=1), procedural_source(2, seed=2))
    rows = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(5, 41, 5))
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    vals = [r for r in read_metrics(tmp_path) if "val_miou" in r]
    assert [r["step"] for r in vals] == [20, 40] and 0.0 <= vals[-1]["val_miou"] <= 1.0
    loaded = load_model(model_path)
    assert loaded.config.input_size_hw == TINY_SIZE_HW and loaded.config.width == 0.25
    assert loaded.info["train_config"]["steps"] == 40
    curves = cv2.imread(str(tmp_path / "curves.png"))
    assert curves is not None and curves.shape[0] > 100 and curves.std() > 0
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 40 and json.loads(checkpoint["train_config"])["lr"] == 1e-2


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    source, val = procedural_source(4, seed=1), procedural_source(1, seed=2)
    train(tiny_run(tmp_path, steps=10, eval_every=10, checkpoint_every=10), source, val)
    with pytest.raises(ModelError, match="pass --resume"):
        train(tiny_run(tmp_path, steps=20, eval_every=10, checkpoint_every=10), source, val)
    with pytest.raises(ModelError, match=r"lr: 0\.01 -> 0\.02"):
        train(tiny_run(tmp_path, steps=20, lr=2e-2, resume=True), source, val)
    train(tiny_run(tmp_path, steps=20, eval_every=10, checkpoint_every=10, resume=True), source, val)
    steps = [r["step"] for r in read_metrics(tmp_path) if "loss" in r]
    assert steps == [5, 10, 15, 20]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 20
    with pytest.raises(ModelError, match="at step 20, beyond --steps 10"):
        train(tiny_run(tmp_path, steps=10, eval_every=10, checkpoint_every=10, resume=True), source, val)


def test_a_checkpoint_written_before_a_setting_existed_resumes_with_the_value_it_trained_with(tmp_path: Path) -> None:
    source, val = procedural_source(2, seed=1), procedural_source(1, seed=2)
    train(tiny_run(tmp_path, steps=5, eval_every=5, checkpoint_every=5, prior_correction=False), source, val)
    path = tmp_path / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    saved = json.loads(payload["train_config"])
    del saved["lovasz"], saved["focus_unit"]  # as a checkpoint from before these settings were written
    torch.save({**payload, "train_config": json.dumps(saved)}, path)
    train(tiny_run(tmp_path, steps=10, eval_every=5, checkpoint_every=5, prior_correction=False, resume=True), source, val)
    assert torch.load(path, weights_only=True)["step"] == 10
    with pytest.raises(ModelError, match=r"lovasz: 0\.0 -> 1\.0"):
        train(tiny_run(tmp_path, steps=15, lovasz=1.0, prior_correction=False, resume=True), source, val)


def test_the_batch_of_a_step_depends_only_on_seed_and_step() -> None:
    source = procedural_source(3)
    a = BatchSampler(source, 4, (32, 48), seed=7).batch(11)
    b = BatchSampler(source, 4, (32, 48), seed=7).batch(11)
    c = BatchSampler(source, 4, (32, 48), seed=7).batch(12)
    assert a[0].shape == (4, 32, 48, 3) and a[1].shape == (4, 32, 48)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_augmentation_keeps_labels_on_their_pixels() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((8, 16, 24)) < 0.3).astype(np.uint8)
    images = np.repeat(labels[..., None] * 255, 3, axis=-1).astype(np.uint8)
    x, y = augment(images, labels, rng)
    assert x.shape == (8, 3, 16, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    bright = x.mean(dim=1) > x.mean(dim=(1, 2, 3))[:, None, None]
    assert float((bright == (y == 1)).float().mean()) > 0.99


def test_class_weights_favour_rare_classes() -> None:
    weights = class_weights(procedural_source(4), 8)
    assert weights.shape == (8,)
    assert int(weights.argmin()) == 1  # road covers most pixels of the procedural frames
    assert float(weights.max()) <= 1.0 / np.log(1.02) + 1e-4


def test_learning_rate_warms_up_then_decays() -> None:
    lrs = [lr_at(s, base_lr=1.0, warmup_steps=10, total_steps=100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lr_at(100, base_lr=1.0, warmup_steps=10, total_steps=100) == pytest.approx(0.01)


def test_focus_crops_centre_on_rare_class_pixels() -> None:
    labels = np.full((1, 64, 96), CLASSES[1].id, dtype=np.uint8)
    labels[0, 50:53, 88:91] = PEDESTRIAN  # a 3x3 pedestrian in a corner
    source = ArraySource([FrameSet(images=np.zeros((1, 64, 96, 3), np.uint8), labels=labels)])
    focused = BatchSampler(source, 16, (24, 32), seed=3, focus=1.0, focus_ids=(PEDESTRIAN,))
    uniform = BatchSampler(source, 16, (24, 32), seed=3)
    shown = [int((focused.batch(step)[1] == PEDESTRIAN).any(axis=(1, 2)).sum()) for step in range(4)]
    assert shown == [16, 16, 16, 16]  # every crop holds the pedestrian, even at the image border
    assert sum(int((uniform.batch(step)[1] == PEDESTRIAN).any(axis=(1, 2)).sum()) for step in range(4)) < 16
    np.testing.assert_array_equal(focused.batch(2)[1], focused.batch(2)[1])  # still a function of (seed, step)


def test_object_focus_gives_a_small_object_as_many_crops_as_a_large_one() -> None:
    labels = np.full((1, 128, 192), CLASSES[1].id, dtype=np.uint8)
    labels[0, 10:70, 10:30] = PEDESTRIAN  # a near pedestrian, 1,200 pixels, in the top-left
    labels[0, 110:112, 180:182] = PEDESTRIAN  # a far one, 4 pixels, in the bottom-right
    source = ArraySource([FrameSet(images=np.zeros((1, 128, 192, 3), np.uint8), labels=labels)])

    def far_share(unit: str) -> float:
        sampler = BatchSampler(source, 50, (24, 32), seed=1, focus=1.0, focus_ids=(PEDESTRIAN,), focus_unit=unit)
        crops = np.concatenate([sampler.batch(step)[1] for step in range(4)])  # (200, 24, 32)
        near = (crops == PEDESTRIAN).sum(axis=(1, 2)) > 4  # a crop of the far one holds at most its 4 pixels
        assert ((crops == PEDESTRIAN).any(axis=(1, 2))).all()  # every focus crop holds one of them
        return float(1.0 - near.mean())

    assert far_share("pixel") < 0.05  # 4 of 1,204 pixels
    assert 0.35 < far_share("object") < 0.65
    with pytest.raises(ValueError, match="focus_unit"):
        TrainConfig(focus_unit="blob")


def test_focus_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown focus classes"):
        TrainConfig(focus_classes="pedestrian,unicorn")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    assert focus_ids(TrainConfig(focus_classes="static_obstacle, pedestrian"), CLASS_NAMES) == (7, 6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_precisions_train(tmp_path: Path, precision: str) -> None:
    config = tiny_run(tmp_path, steps=20, eval_every=20, checkpoint_every=20, precision=precision, prior_correction=False)
    train(config, procedural_source(6, seed=1), procedural_source(1, seed=2))
    rows = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(p.is_contiguous() for p in load_model(tmp_path / "model.pt").model.parameters())  # NCHW on file


def test_distillation_pulls_the_student_towards_the_teacher() -> None:
    source = procedural_source(4, seed=1)
    teacher = ModelConfig(width=0.25, input_size_hw=TINY_SIZE_HW, dropout=0.0).build()
    config = TrainConfig(batch_size=4, crop_height=0, crop_width=0, lr=5e-3, warmup_steps=1, precision="fp32", focus=0.0)

    def disagreement(distill: float) -> float:
        torch.manual_seed(5)
        student = ModelConfig(width=0.25, input_size_hw=TINY_SIZE_HW, dropout=0.0).build()
        sampler = BatchSampler(source, 4, None, seed=0)
        trainer = Trainer(student, sampler, torch.ones(8), config, 30, teacher=teacher, distill=distill)
        for step in range(30):
            trainer.step(step)
        x = torch.from_numpy(source[0].images).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            return float((student.eval()(x).argmax(1) != teacher.eval()(x).argmax(1)).float().mean())

    assert disagreement(1.0) < disagreement(0.0)


def _hard_logits(pred: torch.Tensor, num_classes: int = 8) -> torch.Tensor:
    """Logits whose softmax is one-hot (to float precision) at ``pred`` (B, H, W)."""
    return torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float() * 60.0


def test_lovasz_softmax_of_hard_predictions_is_one_minus_their_iou() -> None:
    # At 0/1 errors the Lovász extension equals the set function it extends: 1 - IoU, per class present in the target.
    rng = np.random.default_rng(3)
    target = torch.from_numpy(rng.integers(0, 5, size=(2, 24, 32)))
    pred = torch.where(torch.from_numpy(rng.random((2, 24, 32)) < 0.3), torch.from_numpy(rng.integers(0, 8, (2, 24, 32))), target)
    target[0, :4] = IGNORE  # ignored pixels count nowhere, whatever is predicted there
    valid = target != IGNORE
    ious = [((pred == c) & (target == c)).sum().item() / (((pred == c) | (target == c)) & valid).sum().item() for c in range(5)]
    expected = 1.0 - float(np.mean(ious))
    assert float(lovasz_softmax(_hard_logits(pred), target)) == pytest.approx(expected, abs=1e-5)
    assert float(lovasz_softmax(_hard_logits(target.clamp(max=7)), target)) == pytest.approx(0.0, abs=1e-6)


def test_lovasz_softmax_top_k_drops_only_the_smallest_errors() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 8, 16, 16) * 3, torch.randint(0, 8, (2, 16, 16))
    full = lovasz_softmax(logits, target, top_k=10**9)
    assert float(lovasz_softmax(logits, target, top_k=2 * 16 * 16)) == pytest.approx(float(full), abs=1e-6)
    truncated = float(lovasz_softmax(logits, target, top_k=64))
    assert 0.0 < truncated < float(full)  # the tail's errors are positive, so leaving them out lowers the loss


def test_lovasz_softmax_gradient_descent_raises_the_iou_of_a_thin_class() -> None:
    # A thin class (a one-pixel line) that cross-entropy-style averaging would drown: the loss's gradient finds it.
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[0, :, 16] = 1
    logits = torch.zeros(1, 2, 32, 32)
    logits[:, 0] = 2.0  # everything predicted background
    before = float(lovasz_softmax(logits, target))
    logits.requires_grad_(True)
    for _ in range(50):
        loss = lovasz_softmax(logits, target)
        (grad,) = torch.autograd.grad(loss, logits)
        logits = (logits - 200.0 * grad).detach().requires_grad_(True)
    logits = logits.detach()
    pred = logits.argmax(1)
    iou = ((pred == 1) & (target == 1)).sum() / ((pred == 1) | (target == 1)).sum()
    assert float(lovasz_softmax(logits, target)) < 0.5 * before and float(iou) == 1.0


def test_the_lovasz_term_enters_the_training_loss() -> None:
    source = procedural_source(2, seed=1)
    config = TrainConfig(batch_size=2, crop_height=0, crop_width=0, lr=0.0, warmup_steps=1, precision="fp32", focus=0.0)

    def first_loss(lovasz: float) -> float:
        torch.manual_seed(5)
        model = ModelConfig(width=0.25, input_size_hw=TINY_SIZE_HW, dropout=0.0).build()
        trainer = Trainer(model, BatchSampler(source, 2, None, seed=0), torch.ones(8), replace(config, lovasz=lovasz), 1)
        return trainer.step(0)

    plain, with_lovasz = first_loss(0.0), first_loss(1.0)
    assert 0.2 < with_lovasz - plain <= 1.0  # a Lovász loss lies in [0, 1]; an untrained network's is far from 0
    with pytest.raises(ValueError, match="lovasz must be non-negative"):
        TrainConfig(lovasz=-1.0)
    with pytest.raises(ValueError, match="lovasz must be non-negative"):
        PruneConfig(lovasz=-1.0)  # at once, not after the pruning steps
    with pytest.raises(ValueError, match="focus_unit"):
        PruneConfig(focus_unit="blob")
