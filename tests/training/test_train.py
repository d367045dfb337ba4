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

from bev_service.classes import CLASS_IDS, CLASS_NAMES, CLASSES
from bev_service.errors import ModelError
from bev_service.runtime.weights import load_model
from bev_service.training.augment import AugmentConfig, augment
from bev_service.training.config import TrainConfig
from bev_service.training.data import IGNORE, ArraySource, BodyLabelled, FrameSet
from bev_service.training.train import BatchSampler, body_rule, class_weights, focus_ids, lr_at, train
from tests.networks import TINY_SIZE_HW, procedural_source

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


def test_a_checkpoint_storing_removed_settings_resumes_only_when_they_were_unused(tmp_path: Path) -> None:
    source, val = procedural_source(2, seed=1), procedural_source(1, seed=2)
    train(tiny_run(tmp_path, steps=5, eval_every=5, checkpoint_every=5, prior_correction=False), source, val)
    path = tmp_path / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)

    def store(**removed: object) -> None:  # as a checkpoint from when these settings existed
        saved = {**json.loads(payload["train_config"]), **removed}
        torch.save({**payload, "train_config": json.dumps(saved)}, path)

    store(lovasz=0.0, focus_unit="pixel")
    train(tiny_run(tmp_path, steps=10, eval_every=5, checkpoint_every=5, prior_correction=False, resume=True), source, val)
    assert torch.load(path, weights_only=True)["step"] == 10
    payload = torch.load(path, weights_only=True)
    store(lovasz=1.0)
    with pytest.raises(ModelError, match="no longer supported"):
        train(tiny_run(tmp_path, steps=15, prior_correction=False, resume=True), source, val)


def test_the_batch_of_a_step_depends_only_on_seed_and_step() -> None:
    source = procedural_source(3)
    a = BatchSampler(source, 4, (32, 48), seed=7).batch(11)
    b = BatchSampler(source, 4, (32, 48), seed=7).batch(11)
    c = BatchSampler(source, 4, (32, 48), seed=7).batch(12)
    assert a[0].shape == (4, 32, 48, 3) and a[1].shape == (4, 32, 48)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


# Every stage but the ones that mix neighbouring pixels (their own tests are in test_augment.py).
_POINTWISE = AugmentConfig().without("amplitude", "randconv", "chromatic_aberration", "blur", "motion_blur", "jpeg")


@pytest.mark.parametrize("config", [AugmentConfig.legacy(), _POINTWISE], ids=["legacy", "pointwise"])
def test_augmentation_keeps_labels_on_their_pixels(config: AugmentConfig) -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((8, 16, 24)) < 0.3).astype(np.uint8)
    images = np.repeat(labels[..., None] * 255, 3, axis=-1).astype(np.uint8)
    x, y = augment(images, labels, rng, config)
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


def test_the_body_can_be_left_out_of_the_loss() -> None:
    labels = np.full((1, 32, 48), CLASSES[1].id, dtype=np.uint8)
    body = np.zeros((1, 32, 48), dtype=bool)
    body[0, 24:, :] = True  # the sill along the bottom rows
    labels[body] = 0
    images = np.zeros((1, 32, 48, 3), np.uint8)
    source = ArraySource([FrameSet(images=images, labels=labels, body=body)])
    ignored = BatchSampler(body_rule(TrainConfig(body="ignore"), source), 2, None, seed=0).batch(0)[1]
    assert (ignored[:, 24:] == IGNORE).all() and (ignored[:, :24] == CLASSES[1].id).all()
    learnt = BatchSampler(body_rule(TrainConfig(), source), 2, None, seed=0).batch(0)[1]
    assert (learnt[:, 24:] == 0).all(), "by default the body is learnt as background"
    vehicle = BatchSampler(body_rule(TrainConfig(body="vehicle"), source), 2, None, seed=0).batch(0)[1]
    assert (vehicle[:, 24:] == CLASS_IDS["vehicle"]).all() and (vehicle[:, :24] == CLASSES[1].id).all()
    separate = BatchSampler(body_rule(TrainConfig(body="separate"), source), 2, None, seed=0).batch(0)[1]
    assert (separate[:, 24:] == len(CLASSES)).all(), "a class of its own: the channel after the output classes"
    assert TrainConfig(body="separate").model_config().head_classes == len(CLASSES) + 1
    np.testing.assert_array_equal(source[0].labels, labels)  # the source keeps its labels
    assert class_weights(BodyLabelled(source), 8)[0] > class_weights(source, 8)[0], "the body counts as no background"
    with pytest.raises(ValueError, match="body"):
        BodyLabelled(ArraySource([FrameSet(images=images, labels=labels)]))
    with pytest.raises(ValueError, match="body must be one of"):
        TrainConfig(body="road")
    with pytest.raises(ValueError, match="unknown rig kind"):
        TrainConfig(val_rigs="default:0.5,blimp:0.5")


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


def test_a_run_that_ignores_the_body_needs_body_masks_in_training_and_validation(tmp_path: Path) -> None:
    def with_body(source: ArraySource) -> ArraySource:
        frames = [source[i] for i in range(len(source))]
        masks = [np.zeros(f.labels.shape, dtype=bool) for f in frames]
        for m in masks:
            m[:, -8:] = True  # a sill along the bottom rows
        return ArraySource([FrameSet(images=f.images, labels=f.labels, body=m) for f, m in zip(frames, masks, strict=True)])

    config = tiny_run(tmp_path, steps=4, eval_every=4, checkpoint_every=4, body="ignore", prior_correction=False)
    with pytest.raises(ValueError, match="body"):
        train(config, with_body(procedural_source(2, seed=1)), procedural_source(1, seed=2))  # validation without masks
    train(config, with_body(procedural_source(2, seed=1)), with_body(procedural_source(1, seed=2)))
    assert (tmp_path / "model.pt").is_file()
