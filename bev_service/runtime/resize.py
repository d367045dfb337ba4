"""Resizing camera frames to the network's input: images by area or bilinear, label maps nearest-neighbour."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray


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
