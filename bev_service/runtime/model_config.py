"""What rebuilds a network: ``ModelConfig``, stored in every model file and ONNX graph. No torch import."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bev_service.classes import CLASS_NAMES
from bev_service.errors import ModelError

if TYPE_CHECKING:
    from bev_service.runtime.enet import ENet

DEFAULT_INPUT_SIZE_HW = (320, 480)  # the default rig's 960x640 cameras halved
INPUT_MULTIPLE = 8  # the network downsamples three times: its input sides are multiples of 8


@dataclass(frozen=True)
class ModelConfig:
    """What rebuilds a network: the builder's arguments, the input size it was trained for, its classes."""

    num_classes: int = len(CLASS_NAMES)
    width: float = 1.0
    in_channels: int = 3
    dropout: float = 0.1
    activation: str = "relu"
    channels: dict[str, Any] | None = None  # None: the default table for ``width``; set once pruned
    input_size_hw: tuple[int, int] = DEFAULT_INPUT_SIZE_HW
    class_names: tuple[str, ...] = CLASS_NAMES
    arch: str = "enet"
    # Training-only classes after ``class_names`` (the vehicle's own body): classifier channels folded into
    # background in the network's output (``ENet``), so no backend or client ever sees them.
    folded_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.arch != "enet":
            raise ValueError(f"unknown architecture {self.arch!r} (this version builds 'enet')")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.num_classes} classes but {len(self.class_names)} class names")
        clash = sorted(set(self.folded_classes) & set(self.class_names))
        if clash or len(set(self.folded_classes)) != len(self.folded_classes):
            raise ValueError(f"folded classes {list(self.folded_classes)} must be distinct and not output classes")
        h, w = self.input_size_hw
        if h <= 0 or w <= 0 or h % 8 or w % 8:
            raise ValueError(f"input_size_hw must be positive multiples of 8 (height, width), got {self.input_size_hw}")

    def build(self) -> ENet:
        from bev_service.runtime.enet import enet

        return enet(
            num_classes=self.num_classes,
            width=self.width,
            in_channels=self.in_channels,
            dropout=self.dropout,
            activation=self.activation,  # type: ignore[arg-type]
            channels=self.channels,
            folded=len(self.folded_classes),
        )

    @property
    def head_classes(self) -> int:
        """Channels of the classifier, what the loss is over: the output classes and the folded ones."""
        return self.num_classes + len(self.folded_classes)

    def with_channels(self, model: ENet) -> ModelConfig:
        """This config with the channel table read back from ``model`` (after pruning)."""
        return ModelConfig(**{**asdict(self), "channels": model.channel_spec()})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_size_hw"] = list(self.input_size_hw)
        out["class_names"] = list(self.class_names)
        out["folded_classes"] = list(self.folded_classes)
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
        for key in ("class_names", "folded_classes"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def check_classes(source: str | Path, config: ModelConfig, expected: tuple[str, ...]) -> None:
    """ModelError unless the model predicts exactly the class table ``expected`` (names in id order)."""
    if config.num_classes != len(expected):
        raise ModelError(
            f"{source}: model predicts {config.num_classes} classes, expected {len(expected)} ({', '.join(expected)})"
        )
    if tuple(config.class_names) != tuple(expected):
        raise ModelError(f"{source}: model classes {list(config.class_names)} differ from the class table {list(expected)}")
