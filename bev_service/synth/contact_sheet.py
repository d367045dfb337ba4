"""A contact sheet: a few frame sets on one picture, for a person to see what the world looks like.

Per frame set, one band: the camera images over their coloured label maps, then the true BEV and
the oracle BEV (the projector's warp of the true labels) side by side; a class legend at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from bev_service.classes import CLASSES, EGO_COLOR, UNKNOWN_COLOR, colorize
from bev_service.synth.render import RenderedFrameSet

_HEADER_PX = 26
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _fit(image: NDArray[np.uint8], size_hw: tuple[int, int], *, labels: bool = False) -> NDArray[np.uint8]:
    interpolation = cv2.INTER_NEAREST if labels else cv2.INTER_AREA
    return np.asarray(cv2.resize(image, (size_hw[1], size_hw[0]), interpolation=interpolation))


def _text(canvas: NDArray[np.uint8], text: str, x: int, y: int, scale: float = 0.5) -> None:
    cv2.putText(canvas, text, (x, y), _FONT, scale, (235, 235, 235), 1, cv2.LINE_AA)


def _band(frame_set: RenderedFrameSet, tile_hw: tuple[int, int], title: str) -> NDArray[np.uint8]:
    th, tw = tile_hw
    n = len(frame_set.camera_names)
    bev = 2 * th
    band = np.full((_HEADER_PX + 2 * th, n * tw + 2 * bev + 8, 3), 30, dtype=np.uint8)
    _text(band, title, 6, 18)
    for i, name in enumerate(frame_set.camera_names):
        x = i * tw
        band[_HEADER_PX : _HEADER_PX + th, x : x + tw] = _fit(frame_set.images[name], tile_hw)
        band[_HEADER_PX + th :, x : x + tw] = _fit(colorize(frame_set.labels[name]), tile_hw, labels=True)
        _text(band, name, x + 6, _HEADER_PX + 16, 0.45)
    for j, (name, grid) in enumerate((("true BEV", frame_set.bev_truth), ("oracle BEV", frame_set.bev_oracle))):
        x = n * tw + 8 + j * bev
        band[_HEADER_PX:, x : x + bev] = _fit(colorize(grid), (bev, bev), labels=True)
        _text(band, name, x + 6, _HEADER_PX + 16, 0.45)
    return band


def legend(width: int) -> NDArray[np.uint8]:
    """A strip ``width`` pixels wide naming each class colour (and ego, unknown)."""
    legend = np.full((30, width, 3), 30, dtype=np.uint8)
    entries = [(c.name, c.color_rgb) for c in CLASSES] + [("ego", EGO_COLOR), ("unknown", UNKNOWN_COLOR)]
    x = 6
    for name, colour in entries:
        cv2.rectangle(legend, (x, 8), (x + 14, 22), tuple(int(v) for v in colour), -1)
        cv2.rectangle(legend, (x, 8), (x + 14, 22), (120, 120, 120), 1)
        _text(legend, name, x + 19, 20, 0.42)
        x += 26 + 8 * len(name)
    return legend


def contact_sheet(frame_sets: Sequence[RenderedFrameSet], *, tile_hw: tuple[int, int] = (160, 240)) -> NDArray[np.uint8]:
    """(H, W, 3) RGB picture of the frame sets (all from one rig)."""
    if not frame_sets:
        raise ValueError("a contact sheet needs at least one frame set")
    bands = []
    for k, fs in enumerate(frame_sets):
        pose = fs.pose.as_dict()
        title = f"#{k}  pose x={pose['x_m']:.1f} m y={pose['y_m']:.1f} m yaw={pose['yaw_deg']:.0f} deg  t={fs.time_s:.1f} s"
        bands.append(_band(fs, tile_hw, title))
    sheet = np.vstack([*bands, legend(bands[0].shape[1])])
    return np.ascontiguousarray(sheet)
