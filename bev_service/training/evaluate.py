"""Per-class IoU and mIoU, in image space and in BEV space, as a table and as JSON.

Image space compares each camera's predicted labels with its true labels. BEV space warps the
predictions through the rig's tables and compares them with the true BEV grid on the cells a camera
sees (not unknown, not ego). Beside it: the oracle (the warp of the *true* camera labels, what a
perfect segmenter gives through a flat-ground warp) against the true BEV, which is the ceiling a
flat-ground warp allows (objects with height smear), and the prediction against the oracle.

Scores are taken at the labels' size. That is the network's input size, unless a folder is read at
the size it was written at (``bev eval --labels-at frame``): then the prediction is scaled up to the
camera's labels, one reference for networks of different input sizes.

mIoU averages the classes present in the reference (a class the reference never holds has no IoU).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from bev_service.classes import CLASSES
from bev_service.geometry.projector import BevProjector
from bev_service.runtime.resize import resize_images, resize_labels
from bev_service.runtime.segmenter import Segmenter
from bev_service.training.data import FrameSet, FrameSource


@dataclass
class Confusion:
    """A confusion matrix: rows the reference class, columns the predicted class."""

    num_classes: int
    matrix: NDArray[np.int64] = field(init=False)
    # Reference pixels predicted as something outside the class table (unknown, ego in a BEV grid).
    misses: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.misses = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, predicted: NDArray[np.uint8], reference: NDArray[np.uint8], mask: NDArray[np.bool_] | None = None) -> None:
        """Count pixels where ``mask`` holds and the reference is a class id (255 and grid values skipped)."""
        keep = reference < self.num_classes
        if mask is not None:
            keep &= mask
        ref = reference[keep].astype(np.int64)
        pred = np.minimum(predicted[keep].astype(np.int64), self.num_classes)  # grid values land in an overflow bin
        n = self.num_classes
        counts = np.bincount(ref * (n + 1) + pred, minlength=n * (n + 1)).reshape(n, n + 1)
        self.matrix += counts[:, :n]
        self.misses += counts[:, n]

    def iou(self) -> NDArray[np.float64]:
        """Per-class IoU, NaN for classes absent from the reference."""
        tp = np.diag(self.matrix).astype(np.float64)
        support = self.matrix.sum(axis=1) + self.misses
        union = support + self.matrix.sum(axis=0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(support > 0, tp / union, np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def accuracy(self) -> float:
        total = self.matrix.sum() + self.misses.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def summary(conf: Confusion, class_names: tuple[str, ...]) -> dict[str, Any]:
    iou = conf.iou()
    return {
        "miou": _finite(conf.miou()),
        "pixel_accuracy": _finite(conf.accuracy()),
        "iou": {name: _finite(v) for name, v in zip(class_names, iou, strict=True)},
    }


GROUND_CLASSES = tuple(c.name for c in CLASSES if c.ground)


def body_summary(counts: NDArray[np.int64], names: tuple[str, ...]) -> dict[str, Any]:
    """What the vehicle's own body was called: its pixels, the share called a ground class, the share per class."""
    total = int(counts.sum())
    ground = sum(int(c) for n, c in zip(names, counts, strict=True) if n in GROUND_CLASSES)
    return {
        "pixels": total,
        "ground_share": round(ground / total, 4) if total else None,
        "ground_classes": list(GROUND_CLASSES),
        "called": {n: round(int(c) / total, 4) if total else None for n, c in zip(names, counts, strict=True)},
    }


def _finite(value: float) -> float | None:
    return round(float(value), 4) if np.isfinite(value) else None


def seen_cells(projector: BevProjector, input_size_hw: tuple[int, int]) -> NDArray[np.bool_]:
    """(rows, cols): cells some camera sees (neither unknown nor ego)."""
    return ~projector.label_table(input_size_hw).fixed.reshape(projector.grid_shape)


@dataclass
class Evaluation:
    """Confusions gathered over frame sets; ``report`` turns them into figures."""

    class_names: tuple[str, ...]
    image: Confusion
    bev: Confusion  # prediction vs true BEV
    bev_vs_oracle: Confusion  # prediction vs the warp of the true labels
    oracle: Confusion  # warp of the true labels vs true BEV: the flat-ground ceiling
    body: NDArray[np.int64]  # the vehicle's own body pixels by predicted class (frame sets that know the body)
    frame_sets: int = 0

    @classmethod
    def empty(cls, class_names: tuple[str, ...]) -> Evaluation:
        n = len(class_names)
        return cls(class_names, Confusion(n), Confusion(n), Confusion(n), Confusion(n), np.zeros(n, dtype=np.int64))

    def add(self, frame_set: FrameSet, predicted: NDArray[np.uint8], projector: BevProjector | None) -> None:
        self.image.update(predicted, frame_set.labels)
        if frame_set.body is not None:
            n = len(self.class_names)
            self.body += np.bincount(predicted[frame_set.body], minlength=n)[:n]
        self.frame_sets += 1
        if projector is None or frame_set.bev is None:
            return
        size = frame_set.labels.shape[1:3]
        mask = seen_cells(projector, size)
        predicted_bev = projector.warp_labels(predicted)
        oracle_bev = projector.warp_labels(frame_set.labels)
        self.bev.update(predicted_bev, frame_set.bev, mask)
        self.bev_vs_oracle.update(predicted_bev, oracle_bev, mask)
        self.oracle.update(oracle_bev, frame_set.bev, mask)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"frame_sets": self.frame_sets, "image": summary(self.image, self.class_names)}
        if self.body.sum():
            out["body"] = body_summary(self.body, self.class_names)
        if self.bev.matrix.sum():
            out["bev"] = summary(self.bev, self.class_names)
            out["bev_vs_oracle"] = summary(self.bev_vs_oracle, self.class_names)
            out["oracle_vs_true_bev"] = summary(self.oracle, self.class_names)
        return out


def evaluate(
    segmenter: Segmenter,
    source: FrameSource,
    *,
    projector: BevProjector | None = None,
    indices: Iterable[int] | None = None,
    progress: bool = False,
) -> Evaluation:
    """Segment every frame set of ``source`` (all cameras in one batch) and gather the confusions.

    Frame sets larger than the network's input are scored at their own size: the images are resized to the input
    (area averaging, as the pipeline does) and the prediction is scaled back up to the labels (nearest).
    """
    result = Evaluation.empty(tuple(segmenter.config.class_names))
    chosen = list(indices) if indices is not None else list(range(len(source)))
    for i in tqdm(chosen, desc="evaluate", unit="frame set", disable=not progress):
        frame_set = source[i]
        images = resize_images(frame_set.images, segmenter.input_size_hw)
        predicted = segmenter.segment(images).labels_numpy()  # (N, h, w) at the input size
        result.add(frame_set, resize_labels(predicted, frame_set.labels.shape[1:3]), projector)
    return result


def format_table(report: dict[str, Any]) -> str:
    """Per-class IoU columns for every space in the report, one row per class, mIoU last."""
    spaces = [s for s in ("image", "bev", "bev_vs_oracle", "oracle_vs_true_bev") if s in report]
    names = list(report["image"]["iou"])
    width = max(len(n) for n in [*names, "mIoU"]) + 2
    lines = ["class".ljust(width) + "".join(s.rjust(20) for s in spaces)]
    for name in names:
        cells = [report[s]["iou"][name] for s in spaces]
        lines.append(name.ljust(width) + "".join(_cell(v).rjust(20) for v in cells))
    lines.append("mIoU".ljust(width) + "".join(_cell(report[s]["miou"]).rjust(20) for s in spaces))
    if report.get("body"):
        lines.append(f"the vehicle's own body called a ground class: {report['body']['ground_share']:.3f} of its pixels")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


DEFAULT_CLASS_NAMES = tuple(c.name for c in CLASSES)
