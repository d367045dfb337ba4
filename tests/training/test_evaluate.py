"""IoU arithmetic on known confusions, and BEV evaluation through the default rig's real tables."""

from __future__ import annotations

import numpy as np
import pytest

from bev_service.calib.rigfile import load_rig
from bev_service.geometry.grid import EGO, UNKNOWN
from bev_service.geometry.projector import BevProjector
from bev_service.runtime.torch_backend import TorchSegmenter
from bev_service.training.data import ArraySource, FrameSet
from bev_service.training.evaluate import Confusion, Evaluation, evaluate, format_table, seen_cells
from tests.conftest import DEFAULT_RIG
from tests.networks import TINY, TINY_SIZE_HW, procedural_source, tiny_model

NAMES = ("a", "b", "c")


def test_iou_of_a_known_confusion() -> None:
    conf = Confusion(3)
    reference = np.array([0, 0, 0, 1, 1, 2, 255], dtype=np.uint8)
    predicted = np.array([0, 0, 1, 1, 1, 1, 2], dtype=np.uint8)
    conf.update(predicted, reference)
    # a: tp 2, fn 1, fp 0 -> 2/3; b: tp 2, fp 2 -> 2/4; c: tp 0, fn 1 -> 0. The 255 pixel is ignored.
    np.testing.assert_allclose(conf.iou(), [2 / 3, 0.5, 0.0])
    assert conf.miou() == pytest.approx((2 / 3 + 0.5) / 3)
    assert conf.accuracy() == pytest.approx(4 / 6)


def test_classes_absent_from_the_reference_have_no_iou_and_grid_values_count_as_misses() -> None:
    conf = Confusion(3)
    conf.update(np.array([0, UNKNOWN, EGO], dtype=np.uint8), np.array([0, 0, 0], dtype=np.uint8))
    iou = conf.iou()
    assert iou[0] == pytest.approx(1 / 3) and np.isnan(iou[1]) and np.isnan(iou[2])
    assert conf.miou() == pytest.approx(1 / 3)


def test_a_mask_limits_the_pixels_counted() -> None:
    conf = Confusion(2)
    conf.update(np.array([1, 1], dtype=np.uint8), np.array([0, 1], dtype=np.uint8), mask=np.array([False, True]))
    assert conf.matrix.sum() == 1 and conf.miou() == 1.0


def test_bev_scores_of_the_true_labels_are_perfect_against_the_oracle() -> None:
    rig = load_rig(DEFAULT_RIG)
    projector = BevProjector(rig)
    frame = procedural_source(1)[0]
    truth = projector.warp_labels(frame.labels)  # stands in for a true BEV that the warp reproduces exactly
    frame = FrameSet(images=frame.images, labels=frame.labels, bev=truth)
    result = Evaluation.empty(tuple(f"class{i}" for i in range(8)))
    result.add(frame, frame.labels, projector)
    report = result.report()
    assert report["image"]["miou"] == 1.0 and report["bev"]["miou"] == 1.0
    assert report["bev_vs_oracle"]["miou"] == 1.0 and report["oracle_vs_true_bev"]["miou"] == 1.0
    seen = seen_cells(projector, TINY_SIZE_HW)
    assert result.bev.matrix.sum() == int((seen & (truth < 8)).sum()) > 0
    assert not seen[truth == EGO].any() and not seen[truth == UNKNOWN].any()


def test_evaluate_runs_a_segmenter_over_a_source_and_prints_a_table() -> None:
    rig = load_rig(DEFAULT_RIG)
    projector = BevProjector(rig)
    source = procedural_source(2)
    frames = [FrameSet(images=f.images, labels=f.labels, bev=projector.warp_labels(f.labels)) for f in (source[0], source[1])]
    result = evaluate(TorchSegmenter(tiny_model(), TINY, device="cpu"), ArraySource(frames), projector=projector)
    report = result.report()
    assert report["frame_sets"] == 2
    assert set(report) == {"frame_sets", "image", "bev", "bev_vs_oracle", "oracle_vs_true_bev"}
    assert list(report["image"]["iou"]) == list(TINY.class_names)
    table = format_table(report).splitlines()
    assert table[0].split()[1:] == ["image", "bev", "bev_vs_oracle", "oracle_vs_true_bev"]
    assert table[-1].startswith("mIoU") and len(table) == 2 + len(TINY.class_names)
