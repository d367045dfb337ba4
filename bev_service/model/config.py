"""Settings of the network, of training and of pruning: plain dataclasses, JSON-able, no torch import.

``ModelConfig`` rebuilds a network (stored in every model file and ONNX graph); ``TrainConfig`` and
``PruneConfig`` are the flags of ``bev train`` and ``bev prune`` and are stored in their checkpoints
and reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from bev_service.classes import CLASSES

if TYPE_CHECKING:
    from bev_service.model.enet import ENet

DEFAULT_INPUT_SIZE_HW = (320, 480)  # the default rig's 960x640 cameras halved
PRECISIONS = ("bf16", "fp32")
# Training settings added after checkpoints were first written, with the value that applied before each existed:
# a checkpoint without one resumes as it trained (its absence reads as this value, not as today's default).
SETTINGS_BEFORE_THEY_EXISTED: dict[str, Any] = {"lovasz": 0.0, "focus_unit": "pixel"}
FOCUS_UNITS = ("pixel", "object")
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
        "prior_correction",
        "render_cache",
    }
)


@dataclass(frozen=True)
class ModelConfig:
    """What rebuilds a network: the builder's arguments, the input size it was trained for, its classes."""

    num_classes: int = len(CLASSES)
    width: float = 1.0
    in_channels: int = 3
    dropout: float = 0.1
    activation: str = "relu"
    channels: dict[str, Any] | None = None  # None: the default table for ``width``; set once pruned
    input_size_hw: tuple[int, int] = DEFAULT_INPUT_SIZE_HW
    class_names: tuple[str, ...] = tuple(c.name for c in CLASSES)
    arch: str = "enet"

    def __post_init__(self) -> None:
        if self.arch != "enet":
            raise ValueError(f"unknown architecture {self.arch!r} (this version builds 'enet')")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.num_classes} classes but {len(self.class_names)} class names")
        h, w = self.input_size_hw
        if h <= 0 or w <= 0 or h % 8 or w % 8:
            raise ValueError(f"input_size_hw must be positive multiples of 8 (height, width), got {self.input_size_hw}")

    def build(self) -> ENet:
        from bev_service.model.enet import enet

        return enet(
            num_classes=self.num_classes,
            width=self.width,
            in_channels=self.in_channels,
            dropout=self.dropout,
            activation=self.activation,  # type: ignore[arg-type]
            channels=self.channels,
        )

    def with_channels(self, model: ENet) -> ModelConfig:
        """This config with the channel table read back from ``model`` (after pruning)."""
        return ModelConfig(**{**asdict(self), "channels": model.channel_spec()})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_size_hw"] = list(self.input_size_hw)
        out["class_names"] = list(self.class_names)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}")
        values = dict(data)
        if "input_size_hw" in values:
            values["input_size_hw"] = tuple(int(v) for v in values["input_size_hw"])
        if "class_names" in values:
            values["class_names"] = tuple(values["class_names"])
        return cls(**values)


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in its checkpoints. Each field is a ``bev train`` flag."""

    out_dir: str = "build/train"
    data: str = "synth"  # "synth" renders frame sets up front; otherwise a folder written by `bev synth`
    rig: str = "calibration/default_rig.yaml"
    train_frame_sets: int = 256  # rendered from data set seed `data_seed` (8 per world) when data is "synth"
    data_seed: int = 0
    val_data: str = "synth"  # held-out frame sets: "synth" renders data set `val_seed`, else a folder
    val_seed: int = 100_000
    val_frame_sets: int = 16
    render_cache: str = ""  # a folder: rendered data sets are kept there and reused (model/synthdata.py); "": none
    width: float = 1.0
    input_height: int = 320
    input_width: int = 480
    crop_height: int = 192  # 0: train on whole images
    crop_width: int = 256
    batch_size: int = 8
    steps: int = 4000
    lr: float = 4e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    class_weight_c: float = 1.02  # ENet's class weighting 1 / ln(c + p_class) (Paszke et al., 2016, sec. 5.2)
    focus: float = 0.5  # share of crops centred on a pixel of a focus class (when the image has one)
    focus_classes: str = "pedestrian,static_obstacle"  # comma-separated class names; "" turns focusing off
    focus_unit: str = "pixel"  # "pixel": focus crops centre on a random pixel of the class; "object": on a random object of it
    lovasz: float = 0.0  # weight of the Lovász-softmax loss (an IoU surrogate) added to the cross-entropy
    precision: str = "bf16"  # "bf16": autocast forward passes (oneDNN AMX / AVX512-BF16 on CPUs, tensor cores on GPUs); "fp32"
    prior_correction: bool = True  # fold validation-chosen logit offsets (-alpha log w, per class) into the head (model/prior.py)
    eval_every: int = 500
    checkpoint_every: int = 250
    log_every: int = 25
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True
    resume: bool = False

    @property
    def input_size_hw(self) -> tuple[int, int]:
        return self.input_height, self.input_width

    @property
    def crop_size_hw(self) -> tuple[int, int] | None:
        return (self.crop_height, self.crop_width) if self.crop_height and self.crop_width else None

    def model_config(self) -> ModelConfig:
        return ModelConfig(width=self.width, input_size_hw=self.input_size_hw)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= self.focus <= 1.0:
            raise ValueError(f"focus must be in [0, 1], got {self.focus}")
        if self.focus_unit not in FOCUS_UNITS:
            raise ValueError(f"focus_unit must be one of {FOCUS_UNITS}, got {self.focus_unit!r}")
        if self.lovasz < 0:
            raise ValueError(f"lovasz must be non-negative, got {self.lovasz}")
        unknown = sorted(set(self.focus_class_names) - {c.name for c in CLASSES})
        if unknown:
            raise ValueError(f"unknown focus classes {unknown}; the classes are {[c.name for c in CLASSES]}")

    @property
    def focus_class_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.focus_classes.split(",") if name.strip())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class PruneConfig:
    """Settings of ``bev prune``; each field is a flag. Data settings mean what they mean for ``bev train``."""

    model: str = "build/train/model.pt"
    out: str = "build/prune/model.pt"
    ratio: float = 0.4  # 3.1x fewer MACs for the default network (channel counts round down to multiples of 8)
    iterative_steps: int = 3
    finetune_steps: int = 500  # after every pruning step
    final_finetune_steps: int = 0  # more after the last step, in the same schedule (the pruned network's own training)
    # Weight of the unpruned network's soft labels (pixel-wise KL) in the fine-tuning loss. Off by default: the
    # teacher's forward pass makes a step 1.4x slower, and in equal time more plain steps scored higher (models/README.md).
    distill: float = 0.0
    distill_temperature: float = 2.0
    lovasz: float = 0.0  # weight of the Lovász-softmax loss added to the fine-tuning's cross-entropy (TrainConfig)
    prior_correction: bool = True
    lr: float = 6e-3  # 1e-3, 2e-3, 4e-3 and 6e-3 gave 0.721, 0.736, 0.742 and 0.748 validation mIoU (models/README.md)
    warmup_steps: int = 20
    batch_size: int = 8
    crop_height: int = 192
    crop_width: int = 256
    focus: float = 0.5
    focus_classes: str = "pedestrian,static_obstacle"
    focus_unit: str = "pixel"
    precision: str = "bf16"
    data: str = "synth"
    rig: str = "calibration/default_rig.yaml"
    train_frame_sets: int = 256
    data_seed: int = 0
    val_data: str = "synth"
    val_seed: int = 100_000
    val_frame_sets: int = 16
    render_cache: str = ""
    latency_batch: int = 4  # images per timed batch: one frame set of the default rig
    latency_repeats: int = 10
    seed: int = 0
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.iterative_steps < 1:
            raise ValueError(f"iterative_steps must be at least 1, got {self.iterative_steps}")
        if self.finetune_steps < 0 or self.final_finetune_steps < 0:
            raise ValueError(f"fine-tuning steps cannot be negative: {self.finetune_steps}, {self.final_finetune_steps}")
        if not 0.0 <= self.distill <= 1.0 or self.distill_temperature <= 0:
            raise ValueError(
                f"distill must be in [0, 1] and its temperature positive: {self.distill}, {self.distill_temperature}"
            )
        self.finetune_config()  # the fine-tuning settings (focus, Lovász weight, precision) checked now, not after pruning

    def finetune_config(self) -> TrainConfig:
        return TrainConfig(
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            steps=self.finetune_steps,
            batch_size=self.batch_size,
            crop_height=self.crop_height,
            crop_width=self.crop_width,
            focus=self.focus,
            focus_classes=self.focus_classes,
            focus_unit=self.focus_unit,
            lovasz=self.lovasz,
            precision=self.precision,
            seed=self.seed,
            progress=self.progress,
        )
