"""Frame sets and resizing: images are averaged, labels are never blended."""

from __future__ import annotations

import numpy as np
import pytest

from bev_service.runtime.resize import resize_images, resize_labels
from bev_service.training.data import CachedSource, FrameSet, resized
from tests.networks import procedural_source


@pytest.mark.parametrize("size_hw", [(32, 48), (17, 11), (128, 192)])
def test_resized_labels_hold_only_ids_of_the_original(size_hw: tuple[int, int]) -> None:
    frame = procedural_source(1)[0]
    labels = resize_labels(frame.labels, size_hw)
    assert labels.shape == (4, *size_hw) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(np.unique(frame.labels))
    images = resize_images(frame.images, size_hw)
    assert images.shape == (4, *size_hw, 3) and images.dtype == np.uint8


def test_resizing_to_the_same_size_returns_the_arrays() -> None:
    frame = procedural_source(1)[0]
    same = resized(frame, frame.labels.shape[1:3])
    assert same.images is frame.images and same.labels is frame.labels


def test_frame_sets_check_their_arrays() -> None:
    with pytest.raises(ValueError, match="must be uint8"):
        FrameSet(images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="must be uint8"):
        FrameSet(images=np.zeros((2, 8, 8, 3), np.float32), labels=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="body mask must be bool"):
        images, labels = np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8), np.uint8)
        FrameSet(images=images, labels=labels, body=np.zeros((2, 8, 8), np.uint8))


def test_the_body_mask_is_resized_with_the_labels() -> None:
    labels = np.zeros((1, 40, 60), np.uint8)
    body = np.zeros((1, 40, 60), bool)
    body[0, 30:] = True
    labels[0, :30] = 1
    frame = resized(FrameSet(images=np.zeros((1, 40, 60, 3), np.uint8), labels=labels, body=body), (20, 30))
    assert frame.body is not None and frame.body.dtype == np.bool_ and frame.body.shape == (1, 20, 30)
    assert frame.body[0, 15:].all() and not frame.body[0, :15].any()
    assert resized(procedural_source(1)[0], (20, 30)).body is None


def test_cached_source_reads_each_frame_set_once() -> None:
    class Counting:
        def __init__(self) -> None:
            self.reads = 0
            self.inner = procedural_source(2)

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, index: int) -> FrameSet:
            self.reads += 1
            return self.inner[index]

    counting = Counting()
    cached = CachedSource(counting)
    assert cached[1] is cached[1] and len(cached) == 2
    assert counting.reads == 1
