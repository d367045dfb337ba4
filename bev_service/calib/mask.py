"""A camera's validity mask from its own frames: the dark border outside a fisheye's image circle, and,
from a short recording while the vehicle moves, the pixels whose content stays the same (the car's own
body: bumper, sill, mirror housing). Both reach the image's edge; what is left sees the world.

``mask_from_frames`` is pure (NumPy and OpenCV on arrays); ``bev calib mask`` writes its result into a
rig file and draws it over a frame for review.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

DARK_FRACTION = 0.4  # of the image centre's median grey: darker in every frame is outside the image circle
DARK_LEVEL_MAX = 60.0  # and never brighter than this grey level (a lens barrel, JPEG noise on black)
CIRCLE_MARGIN = 0.015  # the fitted image circle is shrunk by this share of its radius: its rim is soft
STILL_LEVEL = 3.0  # grey levels of temporal spread under which a pixel did not change while the vehicle moved
MIN_REGION_SHARE = 0.002  # regions smaller than this share of the image are noise, not body or border
SMOOTH_PX = 5  # blur before the spread, and the closing of the result


@dataclass(frozen=True)
class CameraMask:
    valid: NDArray[np.bool_]  # (h, w): True where the camera sees the world
    dark: NDArray[np.bool_]  # outside the image circle
    still: NDArray[np.bool_]  # the body (all False from a single frame)
    frames: int

    @property
    def hidden_share(self) -> float:
        return float(1.0 - self.valid.mean())


def _grey(frame: NDArray[np.uint8]) -> NDArray[np.float32]:
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    return np.asarray(cv2.GaussianBlur(grey.astype(np.float32), (SMOOTH_PX, SMOOTH_PX), 0))


def _touching_edge(region: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The connected parts of ``region`` that reach the image's edge and are not specks."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    h, w = region.shape
    keep = np.zeros(count, bool)
    for i in range(1, count):
        x, y, bw, bh, area = stats[i]
        at_edge = x == 0 or y == 0 or x + bw == w or y + bh == h
        keep[i] = at_edge and area >= MIN_REGION_SHARE * h * w
    return keep[labels]


def _outside_image_circle(brightest: NDArray[np.float32]) -> NDArray[np.bool_]:
    """Pixels outside a fisheye's image circle, from the brightest value each pixel took: when the image's
    corners are dark, the bright region about the centre, its outline fitted by an ellipse (robust to dark
    scenery inside it and to noise on the black outside); else the dark regions reaching the edge."""
    h, w = brightest.shape
    centre = brightest[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3]
    dark = brightest < min(DARK_LEVEL_MAX, DARK_FRACTION * float(np.median(centre)))
    ch, cw = max(1, h // 20), max(1, w // 20)
    corners = [dark[:ch, :cw], dark[:ch, -cw:], dark[-ch:, :cw], dark[-ch:, -cw:]]
    if sum(c.mean() > 0.8 for c in corners) < 3:
        return _touching_edge(dark)
    _count, labels = cv2.connectedComponents((~dark).astype(np.uint8), connectivity=8)
    middle = labels[h // 2 - ch : h // 2 + ch, w // 2 - cw : w // 2 + cw]
    ids, votes = np.unique(middle[middle > 0], return_counts=True)
    if not ids.size:
        return _touching_edge(dark)
    region = (labels == ids[np.argmax(votes)]).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    rim = max(contours, key=cv2.contourArea).reshape(-1, 2)
    rim = rim[(rim[:, 0] > 0) & (rim[:, 0] < w - 1) & (rim[:, 1] > 0) & (rim[:, 1] < h - 1)]  # not where the image cuts it
    if len(rim) < 5:
        return _touching_edge(dark)
    hull = cv2.convexHull(rim.reshape(-1, 1, 2))  # the rim, without dark scenery cutting into the circle
    if len(hull) < 5:
        return _touching_edge(dark)
    (cx, cy), (major, minor), angle = cv2.fitEllipse(hull)
    inside = np.zeros((h, w), np.uint8)
    axes = (int(major / 2 * (1 - CIRCLE_MARGIN)), int(minor / 2 * (1 - CIRCLE_MARGIN)))
    cv2.ellipse(inside, (round(cx), round(cy)), axes, angle, 0, 360, 1, thickness=-1)
    return inside == 0


def mask_from_frames(frames: Sequence[NDArray[np.uint8]]) -> CameraMask:
    """The validity mask of one camera from its frames ((h, w, 3) RGB or (h, w) grey, one size): dark in
    every frame = outside the image circle (``_outside_image_circle``); with three frames or more,
    unchanged across them and reaching the edge = the body. ValueError for no frames or frames of
    several sizes."""
    if not frames:
        raise ValueError("no frames")
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) != 1:
        raise ValueError(f"frames of one camera must have one size, got {sorted(sizes)}")
    greys = np.stack([_grey(f) for f in frames])
    dark = _outside_image_circle(greys.max(axis=0))
    moving = len(frames) >= 3  # a spread needs a few frames; one or two give the image circle alone
    still = _touching_edge((greys.std(axis=0) < STILL_LEVEL) & ~dark) if moving else np.zeros(dark.shape, bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * SMOOTH_PX + 1, 2 * SMOOTH_PX + 1))
    hidden = cv2.morphologyEx((dark | still).astype(np.uint8), cv2.MORPH_CLOSE, kernel)  # seams, small holes
    return CameraMask(valid=np.asarray(hidden) == 0, dark=dark, still=still, frames=len(frames))


def mask_picture(frame: NDArray[np.uint8], mask: CameraMask) -> NDArray[np.uint8]:
    """The frame with the hidden pixels tinted (red: the body, blue: outside the image circle), for review."""
    picture = (frame if frame.ndim == 3 else np.repeat(frame[..., None], 3, axis=-1)).astype(np.float32)
    for region, colour in ((mask.still, (255.0, 40.0, 40.0)), (mask.dark & ~mask.still, (40.0, 80.0, 255.0))):
        picture[region] = 0.45 * picture[region] + 0.55 * np.asarray(colour, np.float32)
    edge = cv2.morphologyEx(mask.valid.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    picture[edge] = (255.0, 255.0, 0.0)
    return np.clip(picture + 0.5, 0, 255).astype(np.uint8)
