"""Resizing camera frames to the network's input: images by area or bilinear, label maps nearest-neighbour;
and the size each camera runs through the network at (``network_input_size``)."""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray

from bev_service.runtime.model_config import INPUT_MULTIPLE


def network_input_size(image_size_hw: tuple[int, int], pixels: int, multiple: int = INPUT_MULTIPLE) -> tuple[int, int]:
    """The (h, w) a camera of ``image_size_hw`` runs through the network at: sides that are multiples of
    ``multiple``, the aspect ratio as close as those allow, about ``pixels`` pixels (the network's training
    size), never larger than the image. 960x640 at 480x320's pixels gives 480x320; 1280x1080 gives 424x360."""
    h, w = image_size_hw
    if h <= 0 or w <= 0 or pixels <= 0:
        raise ValueError(f"expected a positive image size and pixel count, got {image_size_hw} and {pixels}")
    aspect = w / h
    scale = min(1.0, math.sqrt(pixels / (h * w)))
    largest_h, largest_w = (max(multiple, n // multiple * multiple) for n in (h, w))
    near = round(h * scale / multiple)
    best: tuple[float, int, int] | None = None
    for k in range(max(1, near - 2), near + 3):  # heights around the target; each with its closest width
        rows = min(largest_h, k * multiple)
        cols = min(largest_w, max(multiple, round(rows * aspect / multiple) * multiple))
        # Mostly the aspect ratio (the tables stay exact either way, the network sees less stretch), then the pixel count.
        score = abs(cols / rows - aspect) / aspect + 0.25 * abs(math.log(rows * cols / min(pixels, h * w)))
        if best is None or score < best[0]:
            best = (score, rows, cols)
    assert best is not None
    return best[1], best[2]


def _cv_size(size_hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) to OpenCV's (width, height)."""
    return int(size_hw[1]), int(size_hw[0])


def resize_images(images: NDArray[np.uint8], size_hw: tuple[int, int]) -> NDArray[np.uint8]:
    """(N, h, w, 3) to (N, H, W, 3): area averaging when shrinking, bilinear when enlarging."""
    if images.shape[1:3] == tuple(size_hw):
        return images
    shrink = images.shape[1] > size_hw[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, _cv_size(size_hw), interpolation=interp) for im in images])


def resize_labels(labels: NDArray[np.uint8], size_hw: tuple[int, int]) -> NDArray[np.uint8]:
    """(N, h, w) to (N, H, W), nearest neighbour: class ids are never blended."""
    if labels.shape[1:3] == tuple(size_hw):
        return labels
    return np.stack([cv2.resize(lb, _cv_size(size_hw), interpolation=cv2.INTER_NEAREST_EXACT) for lb in labels])
