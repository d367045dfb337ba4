"""Settings of training and of pruning: plain dataclasses, JSON-able, no torch import.

``TrainConfig`` and ``PruneConfig`` are the flags of ``bev train`` and ``bev prune`` and are stored in their
checkpoints and reports; the network they build is a ``ModelConfig`` (``runtime/model_config.py``). What both
share (the data, the batches, the optimiser's schedule, the seed) is ``RunConfig``, their common base: the stored
JSON stays one flat dict per command, as it always was.

A recipe (``recipes/shipped.json``, read by ``--recipe``) holds the values a trained model was made with:
``common`` for both commands, then ``train`` and ``prune`` for each; flags given on the command line override it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Self

from bev_service.classes import CLASSES
from bev_service.runtime.model_config import ModelConfig
from bev_service.shipped import DEFAULT_RIG

PRECISIONS = ("bf16", "fp32")
AUGMENTS = ("legacy", "full", "style")  # AugmentConfig.preset
# What the loss makes of the vehicle's own body: learnt as background, left out, learnt as a vehicle (it is one),
# or learnt as a class of its own (OWN_BODY) that the network's output folds into background.
BODY_LABELS = ("background", "ignore", "vehicle", "separate")
OWN_BODY = "own_body"
# Settings a resumed training run may change without changing what it learns.
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "progress",
        "threads",
        "eval_every",
        "checkpoint_every",
        "log_every",
        "resume",
        "val_data",
        "val_seed",
        "val_frame_sets",
        "val_rigs",
        "prior_correction",
        "render_cache",
    }
)
# Settings since removed (they did not help: docs/tried.md), with the value under which a run stored with
# one trained as today's code trains; a checkpoint stored with another value cannot be resumed.
REMOVED_SETTINGS: dict[str, Any] = {"lovasz": 0.0, "focus_unit": "pixel", "distill": 0.0}

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
SHIPPED_RECIPE = RECIPES_DIR / "shipped.json"
RECIPE_FORMAT = "bev-service/recipe"
RECIPE_SECTIONS = ("common", "train", "prune")


@dataclass
class RunConfig:
    """What ``bev train`` and ``bev prune`` (whose fine-tuning is a short training run) share; each field is a flag."""

    data: str = "synth"  # "synth" renders frame sets up front; otherwise a folder written by `bev synth`
    rig: str = str(DEFAULT_RIG)
    train_frame_sets: int = 256  # rendered from data set seed `data_seed` (8 per world) when data is "synth"
    data_seed: int = 0
    rigs: str = "default"  # rigs the training frame sets come from: "default" (``rig``) or a mix with random rigs (synthdata.py)
    augment: str = "legacy"  # appearance randomization of the training crops: "legacy", "full" or "style" (training/augment.py)
    val_data: str = "synth"  # held-out frame sets: "synth" renders data set `val_seed`, else a folder
    val_seed: int = 100_000
    val_frame_sets: int = 16
    val_rigs: str = "default"  # the validation's rig mix, as ``rigs``: a mix with random rigs validates on rigs never trained on
    body: str = "background"  # the vehicle's own body in the loss (rendered frame sets know it): one of BODY_LABELS
    render_cache: str = ""  # a folder: rendered data sets are kept there and reused (training/synthdata.py); "": none
    crop_height: int = 192  # 0: train on whole images
    crop_width: int = 256
    batch_size: int = 8
    lr: float = 4e-3
    warmup_steps: int = 100
    focus: float = 0.5  # share of crops centred on a random pixel of a focus class (when the image has one)
    focus_classes: str = "pedestrian,static_obstacle"  # comma-separated class names; "" turns focusing off
    precision: str = "bf16"  # "bf16": autocast forward passes (oneDNN AMX / AVX512-BF16 on CPUs, tensor cores on GPUs); "fp32"
    prior_correction: bool = True  # fold validation-chosen logit offsets (-alpha log w, per class) into the head (prior.py)
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= self.focus <= 1.0:
            raise ValueError(f"focus must be in [0, 1], got {self.focus}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if self.body not in BODY_LABELS:
            raise ValueError(f"body must be one of {BODY_LABELS}, got {self.body!r}")
        from bev_service.training.synthdata import parse_rig_mix  # numpy only: no torch

        parse_rig_mix(self.rigs)
        parse_rig_mix(self.val_rigs)
        unknown = sorted(set(self.focus_class_names) - {c.name for c in CLASSES})
        if unknown:
            raise ValueError(f"unknown focus classes {unknown}; the classes are {[c.name for c in CLASSES]}")

    @property
    def focus_class_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.focus_classes.split(",") if name.strip())

    @property
    def folded_classes(self) -> tuple[str, ...]:
        """The network's training-only classes (``ModelConfig.folded_classes``) that ``body`` asks for."""
        return (OWN_BODY,) if self.body == "separate" else ()

    @property
    def crop_size_hw(self) -> tuple[int, int] | None:
        return (self.crop_height, self.crop_width) if self.crop_height and self.crop_width else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """A config from its stored JSON (a checkpoint's, a model's, a report's): the flat dict ``asdict`` wrote.

        Keys of settings since removed are dropped when they hold the value that made them no-ops (a stored
        ``"distill": 0.0``), and refused otherwise: that run cannot be repeated. Other unknown keys are dropped.
        """
        removed = {k: v for k, v in data.items() if k in REMOVED_SETTINGS and v != REMOVED_SETTINGS[k]}
        if removed:
            raise ValueError(f"settings no longer supported: {removed}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainConfig(RunConfig):
    """Everything a training run depends on; stored in its checkpoints. Each field is a ``bev train`` flag."""

    out_dir: str = "build/train"
    width: float = 1.0
    input_height: int = 320
    input_width: int = 480
    steps: int = 4000
    weight_decay: float = 1e-4
    class_weight_c: float = 1.02  # ENet's class weighting 1 / ln(c + p_class) (Paszke et al., 2016, sec. 5.2)
    eval_every: int = 500
    checkpoint_every: int = 250
    log_every: int = 25
    resume: bool = False

    @property
    def input_size_hw(self) -> tuple[int, int]:
        return self.input_height, self.input_width

    def model_config(self) -> ModelConfig:
        return ModelConfig(width=self.width, input_size_hw=self.input_size_hw, folded_classes=self.folded_classes)


@dataclass
class PruneConfig(RunConfig):
    """Settings of ``bev prune``; each field is a flag. The ``RunConfig`` fields set its fine-tuning runs."""

    model: str = "build/train/model.pt"
    out: str = "build/prune/model.pt"
    ratio: float = 0.4  # 3.1x fewer MACs for the default network (channel counts round down to multiples of 8)
    keep: str = ""  # comma-separated layers ("initial", "stage1.0.reduce") kept at full width, with the channels tied to them
    iterative_steps: int = 3
    finetune_steps: int = 500  # after every pruning step
    final_finetune_steps: int = 0  # more after the last step, in the same schedule (the pruned network's own training)
    lr: float = 6e-3  # 1e-3, 2e-3, 4e-3 and 6e-3 gave 0.721, 0.736, 0.742 and 0.748 validation mIoU (docs/tried.md)
    warmup_steps: int = 20
    latency_batch: int = 4  # images per timed batch: one frame set of the default rig
    latency_repeats: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.iterative_steps < 1:
            raise ValueError(f"iterative_steps must be at least 1, got {self.iterative_steps}")
        if self.finetune_steps < 0 or self.final_finetune_steps < 0:
            raise ValueError(f"fine-tuning steps cannot be negative: {self.finetune_steps}, {self.final_finetune_steps}")

    def finetune_config(self) -> TrainConfig:
        """The fine-tuning's training settings: the shared ones as given, ``finetune_steps`` steps."""
        shared = {f.name: getattr(self, f.name) for f in fields(RunConfig)}
        return TrainConfig(**shared, steps=self.finetune_steps)


def read_recipe(path: str | Path, command: str) -> dict[str, Any]:
    """The settings a recipe file gives ``command`` ("train" or "prune"): its ``common`` section, then its own.

    ``path`` is a file, or the name of one in ``recipes/`` ("shipped"). Every key must be a field of that
    command's config, so that a misspelt setting fails instead of being ignored.
    """
    cls = {"train": TrainConfig, "prune": PruneConfig}[command]
    file = Path(path)
    if not file.exists() and not file.suffix and file.parent == Path("."):
        file = RECIPES_DIR / f"{file}.json"
    try:
        recipe = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read recipe {path}: {exc}") from exc
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise ValueError(f'{file}: not a recipe (expected "format": {RECIPE_FORMAT!r})')
    extra = sorted(set(recipe) - {"format", "version", "description", *RECIPE_SECTIONS})
    if extra:
        raise ValueError(f"{file}: unknown recipe sections {extra}; expected {list(RECIPE_SECTIONS)}")
    values = {**recipe.get("common", {}), **recipe.get(command, {})}
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{file}: {unknown} are not settings of bev {command}")
    return values
