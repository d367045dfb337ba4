"""Training curves as a PNG drawn with NumPy and OpenCV (no plotting library in the dependencies)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

PANEL_HW = (300, 520)
MARGIN = (30, 60, 40, 20)  # top, left, bottom, right (pixels)
WHITE, GREY, BLACK = (255, 255, 255), (215, 215, 215), (30, 30, 30)


@dataclass(frozen=True)
class Series:
    name: str
    steps: Sequence[float]
    values: Sequence[float]
    color_bgr: tuple[int, int, int]


def _ticks(lo: float, hi: float, count: int = 5) -> NDArray[np.float64]:
    return np.linspace(lo, hi, count)


def _panel(title: str, series: Sequence[Series], y_range: tuple[float, float] | None) -> NDArray[np.uint8]:
    """One chart: axes, grid lines, tick labels and the series as polylines."""
    h, w = PANEL_HW
    top, left, bottom, right = MARGIN
    img = np.full((h, w, 3), WHITE, dtype=np.uint8)
    drawn = [s for s in series if len(s.steps)]
    cv2.putText(img, title, (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, BLACK, 1, cv2.LINE_AA)
    if not drawn:
        return img
    xs = np.concatenate([np.asarray(s.steps, dtype=np.float64) for s in drawn])
    ys = np.concatenate([np.asarray(s.values, dtype=np.float64) for s in drawn])
    x0, x1 = float(xs.min()), float(max(xs.max(), xs.min() + 1))
    y0, y1 = y_range if y_range is not None else (float(np.nanmin(ys)), float(np.nanmax(ys)))
    y1 = y1 if y1 > y0 else y0 + 1.0

    def px(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.int32]:
        u = left + (x - x0) / (x1 - x0) * (w - left - right)
        v = h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)
        return np.stack([u, v], axis=-1).round().astype(np.int32)

    for y in _ticks(y0, y1):
        (u0, v), (u1, _) = px(np.array([x0, x1]), np.array([y, y]))
        cv2.line(img, (int(u0), int(v)), (int(u1), int(v)), GREY, 1)
        cv2.putText(img, f"{y:.3g}", (4, int(v) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, BLACK, 1, cv2.LINE_AA)
    for x in _ticks(x0, x1):
        u, v = px(np.array([x]), np.array([y0]))[0]
        cv2.putText(img, f"{x:.0f}", (int(u) - 12, int(v) + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.35, BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), BLACK, 1)
    for k, s in enumerate(drawn):
        pts = px(np.asarray(s.steps, dtype=np.float64), np.clip(np.asarray(s.values, dtype=np.float64), y0, y1))
        cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, s.color_bgr, 2, cv2.LINE_AA)
        if len(pts) <= 40:  # sparse series (evaluations): mark each point
            for u, v in pts:
                cv2.circle(img, (int(u), int(v)), 3, s.color_bgr, -1, cv2.LINE_AA)
        cv2.putText(
            img, s.name, (w - right - 150, top + 16 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, s.color_bgr, 1, cv2.LINE_AA
        )
    return img


def plot_training(path: str | Path, loss: Series, miou: Sequence[Series]) -> None:
    """Write loss (left) and mIoU curves in [0, 1] (right) side by side."""
    image = np.concatenate([_panel("training loss", [loss], None), _panel("validation mIoU", miou, (0.0, 1.0))], axis=1)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(target), image):
        raise OSError(f"cannot write {target}")
