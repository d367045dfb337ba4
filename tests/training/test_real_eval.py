"""Scores on hand-annotated real recordings: the arithmetic on references and predictions built by hand, the
annotation file's checks, one recording end to end through a constant segmenter, and ``bev eval --real`` on
the shipped annotations and model over the real footage (skipped without it)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from bev_service.cli.main import main
from bev_service.geometry.grid import BevGrid
from bev_service.imageio import read_image
from bev_service.runtime.model_config import ModelConfig
from bev_service.runtime.segmenter import Segmentation, Segmenter, check_batch
from bev_service.shipped import DEFAULT_RIG, MODELS
from bev_service.training.real_eval import (
    BODY_VALUE,
    AnnotationError,
    RealEvaluation,
    RealScore,
    Region,
    evaluate_recording,
    format_real_table,
    label_values,
    rasterize,
    rasterize_bev,
    read_annotation,
)
from tests.conftest import REPO, real_folder

NAMES = ("background", "road", "terrain")
ANNOTATIONS = sorted((REPO / "evaluation" / "real").glob("*.json"))
INT8_MODEL = MODELS / "enet-pruned-int8.onnx"


def box(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """The rectangle of pixel columns x0..x1 and rows y0..y1, inclusive: its corners on those pixels' centres."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def region(label: str, polygon: list[list[float]]) -> Region:
    return Region(label, np.asarray(polygon, dtype=np.float64))


class TestScoring:
    def reference(self) -> np.ndarray:
        """8 x 12: road in columns 0-5 (less an unjudged 2 x 2 corner), terrain in columns 6-11 of rows 0-5,
        body in columns 6-11 of rows 6-7."""
        regions = [
            region("road", box(0, 0, 5, 7)),
            region("terrain", box(6, 0, 11, 5)),
            region("body", box(6, 6, 11, 7)),
            region("unjudged", box(0, 0, 1, 1)),
        ]
        return rasterize(regions, (8, 12), label_values(NAMES))

    def test_regions_are_painted_in_order_with_everything_else_unjudged(self) -> None:
        ref = self.reference()
        assert (ref == 1).sum() == 6 * 8 - 4 and (ref == 2).sum() == 6 * 6 and (ref == BODY_VALUE).sum() == 6 * 2
        assert (ref[:2, :2] == 255).all() and (ref == 255).sum() == 4

    def test_iou_confusion_and_body_share_of_a_known_prediction(self) -> None:
        predicted = np.zeros((8, 12), dtype=np.uint8)
        predicted[:, :8] = 1  # road up to column 7: 12 terrain pixels (columns 6-7, rows 0-5) called road
        predicted[:, 8:] = 2
        predicted[:2, :2] = 0  # wrong, but unjudged
        predicted[7, 8:] = 0  # body called background in 4 of its 12 pixels
        score = RealScore(NAMES)
        score.add_image(predicted, self.reference())
        report = score.report()
        image = report["image"]
        # road: tp 44, fp 12 (terrain called road) -> 44 / 56; terrain: tp 24 of 36, no fp -> 2 / 3.
        assert image["iou"] == {"background": None, "road": round(44 / 56, 4), "terrain": round(2 / 3, 4)}
        assert image["miou"] == round((44 / 56 + 2 / 3) / 2, 4)
        assert image["classes_present"] == ["road", "terrain"] and image["judged"] == 80
        assert image["confusion"]["matrix"] == [[0, 0, 0], [0, 44, 0], [0, 12, 24]]
        body = report["body"]
        # body: columns 6-7 road (4), columns 8-11 terrain (4) and background (4, row 7).
        assert body["pixels"] == 12 and body["ground_share"] == round(8 / 12, 4)
        assert body["called"] == {"background": round(4 / 12, 4), "road": round(4 / 12, 4), "terrain": round(4 / 12, 4)}

    def test_bev_regions_follow_the_grid_convention(self) -> None:
        """Corners at the centres of the cells x 1.75 and 1.25 (forward), y 1.25 and 0.75 (left) on a 4 m grid of
        0.5 m cells: rows 0-1 (forward-most), columns 1-2 (column 0 is the left-most)."""
        grid = BevGrid((-2.0, 2.0), (-2.0, 2.0), 0.5)
        corners = [[1.25, 0.75], [1.75, 0.75], [1.75, 1.25], [1.25, 1.25]]
        ref = rasterize_bev([region("road", corners)], grid, NAMES)
        expected = np.full((8, 8), 255, dtype=np.uint8)
        expected[0:2, 1:3] = 1
        np.testing.assert_array_equal(ref, expected)

    def test_bev_scores_only_cells_a_camera_sees_and_counts_the_others(self) -> None:
        reference = np.array([[1, 1, 2, 255]], dtype=np.uint8)
        predicted = np.array([[1, 2, 2, 1]], dtype=np.uint8)
        seen = np.array([[True, False, True, True]])
        score = RealScore(NAMES)
        score.add_bev(predicted, reference, seen)
        bev = score.report()["bev"]
        assert bev["iou"]["road"] == 1.0 and bev["iou"]["terrain"] == 1.0 and bev["unseen_cells"] == 1 and bev["judged"] == 2

    def test_pooled_scores_add_the_recordings_and_the_table_shows_them(self) -> None:
        result = RealEvaluation(NAMES)
        for name, label in (("one", 1), ("two", 2)):
            score = RealScore(NAMES)
            score.add_image(np.full((2, 2), 1, dtype=np.uint8), np.full((2, 2), label, dtype=np.uint8))
            result.recordings[name], result.details[name] = score, {"annotation": f"{name}.json"}
        report = result.report()
        assert report["recordings"]["one"]["image"]["iou"]["road"] == 1.0
        assert report["recordings"]["two"]["image"]["iou"]["terrain"] == 0.0
        pooled = report["pooled"]["image"]
        assert pooled["judged"] == 8 and pooled["iou"]["road"] == 0.5 and report["pooled"]["images"] == 2
        table = format_real_table(report)
        assert "one: 1 images" in table and "pooled: 2 images" in table and "0.500" in table


def valid_annotation() -> dict[str, Any]:
    return {
        "format": "bev-real-annotations/1",
        "recording": "tiny",
        "rig": {"importer": "rig-file", "path": str(DEFAULT_RIG), "grid": {"cell_size_m": 0.25}},
        "images": [
            {
                "camera": name,
                "file": f"{name}.png",
                "size_wh": [960, 640],
                "regions": [
                    {"class": "road", "polygon": box(0, 400, 959, 639)},
                    {"class": "terrain", "polygon": box(0, 300, 959, 379)},
                    {"class": "body", "polygon": box(400, 600, 559, 639)},
                ],
            }
            for name in ("front", "left", "rear", "right")
        ],
        "bev": {
            "regions": [
                # corners on cell centres of the 0.25 m grid: rows 16-25 and columns 28-51; rows 19-22, columns 38-41
                {"class": "road", "polygon_m": [[5.875, -2.875], [5.875, 2.875], [3.625, 2.875], [3.625, -2.875]]},
                {"class": "lane_marking", "polygon_m": [[5.125, -0.375], [5.125, 0.375], [4.375, 0.375], [4.375, -0.375]]},
            ]
        },
    }


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


class TestAnnotationFile:
    @pytest.mark.parametrize(
        ("change", "field", "says"),
        [
            (lambda d: d.update(format="bev-real-annotations/0"), "format", "expected 'bev-real-annotations/1'"),
            (lambda d: d["images"][1]["regions"][0].update({"class": "grass"}), "images[1].regions[0].class", "unknown class"),
            (
                lambda d: d["images"][0]["regions"][2].update(polygon=[[0, 0], [5, 5]]),
                "images[0].regions[2].polygon",
                "at least 3 points, got 2",
            ),
            (lambda d: d["images"][2].update(size_wh=[960, 0]), "images[2].size_wh", "positive whole numbers"),
            (
                lambda d: d["images"][0]["regions"][0].update(polygon=[[0, 0], [960, 0], [0, 10]]),
                "images[0].regions[0].polygon",
                "leaves the 960x640 image",
            ),
            (lambda d: d["bev"]["regions"][0].update({"class": "body"}), "bev.regions[0].class", "unknown class"),
            (lambda d: d["rig"].update(importer="guess"), "rig.importer", "unknown importer"),
            (lambda d: d.pop("images"), "", "missing field 'images'"),
        ],
    )
    def test_a_malformed_file_is_refused_naming_the_file_and_the_field(
        self, tmp_path: Path, change: Any, field: str, says: str
    ) -> None:
        data = copy.deepcopy(valid_annotation())
        change(data)
        path = write(tmp_path / "broken.json", data)
        with pytest.raises(AnnotationError) as caught:
            read_annotation(path)
        message = str(caught.value)
        assert str(path) in message and f"{field}:" in message and says in message

    def test_the_shipped_annotations_read_and_every_polygon_lies_inside_its_image(self) -> None:
        assert {p.stem for p in ANNOTATIONS} == {"pjlab-4fisheye-road", "surround-view-4fisheye", "pjlab-4ocam-parking"}
        for path in ANNOTATIONS:
            annotation = read_annotation(path)  # refuses a vertex outside [0, w] x [0, h]
            assert len(annotation.images) == 4 and annotation.bev_regions
            for image in annotation.images:
                h, w = image.size_hw
                for r in image.regions:  # pixel centres at whole numbers
                    assert (r.polygon >= -0.5).all() and (r.polygon[:, 0] <= w - 0.5).all() and (r.polygon[:, 1] <= h - 0.5).all()


class ConstantSegmenter(Segmenter):
    """Calls every pixel road: the expected scores follow from the references alone."""

    backend = "constant"

    def __init__(self) -> None:
        self.config = ModelConfig(input_size_hw=(64, 96))
        self.batches: list[tuple[int, ...]] = []

    def segment(self, batch: Any, *, confidence: bool = False) -> Segmentation:
        check_batch(batch)
        self.batches.append(tuple(batch.shape))
        return Segmentation(np.full(batch.shape[:3], 1, dtype=np.uint8))


def test_a_recording_end_to_end_through_a_constant_segmenter(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    for name in ("front", "left", "rear", "right"):
        cv2.imwrite(str(folder / f"{name}.png"), np.random.default_rng(0).integers(0, 256, (640, 960, 3), dtype=np.uint8))
    annotation = read_annotation(write(tmp_path / "tiny.json", valid_annotation()))
    segmenter = ConstantSegmenter()
    score, details = evaluate_recording(segmenter, annotation, tmp_path)
    report = score.report()
    assert segmenter.batches == [(4, 64, 96, 3)]  # one call for the four cameras, at the service's size
    road, terrain, body_pixels = 960 * 240 - 160 * 40, 960 * 80, 160 * 40  # per camera; the body paints over road
    assert details["cameras"]["front"] == {"input_size_hw": [64, 96], "judged_pixels": road + terrain}
    image, bev, body = report["image"], report["bev"], report["body"]
    # every pixel called road: road's IoU is road / (road + terrain), terrain's 0.
    assert image["iou"]["road"] == round(road / (road + terrain), 4) and image["iou"]["terrain"] == 0.0
    assert body["pixels"] == 4 * body_pixels and body["ground_share"] == 1.0
    assert details["grid"]["cell_size_m"] == 0.25
    # BEV: 10 x 24 cells of road with 4 x 4 of marking in them, all in view of the front camera.
    assert bev["judged"] == 10 * 24 and bev["unseen_cells"] == 0
    assert bev["iou"]["road"] == round((240 - 16) / 240, 4) and bev["iou"]["lane_marking"] == 0.0
    assert bev["classes_present"] == ["road", "lane_marking"]


def test_missing_footage_is_a_clear_error_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "tiny.json", valid_annotation())
    code = main(["eval", "--real", str(path), "--model", str(INT8_MODEL), "--real-data", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "nowhere" / "tiny") in err and "Traceback" not in err


def test_real_and_data_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["eval", "--model", str(INT8_MODEL), "--data", "synth", "--real", str(ANNOTATIONS[0])])
    assert caught.value.code == 2 and "--real: not allowed with argument --data" in capsys.readouterr().err


def test_bev_eval_real_on_the_shipped_annotations_and_model(real_data: Path, tmp_path: Path) -> None:
    for path in ANNOTATIONS:
        folder = real_folder(real_data, read_annotation(path).recording)
        for image in read_annotation(path).images:  # the annotated size is the frame's
            assert read_image(folder / image.file).shape[:2] == image.size_hw, (path.name, image.file)
    out = tmp_path / "real.json"
    code = main(
        ["eval", "--real", *map(str, ANNOTATIONS), "--model", str(INT8_MODEL), "--real-data", str(real_data), "--json", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["data"] == "real" and set(report["recordings"]) == {read_annotation(p).recording for p in ANNOTATIONS}
    for scores in [*report["recordings"].values(), report["pooled"]]:
        assert scores["image"]["judged"] > 0 and scores["bev"]["judged"] > 0 and scores["body"]["pixels"] > 0
        assert scores["image"]["miou"] is not None and scores["bev"]["miou"] is not None
    road = report["recordings"]["pjlab-4fisheye-road"]["bev"]
    assert road["classes_present"] == ["road", "lane_marking", "terrain"]


def test_a_missing_image_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    annotation = read_annotation(write(tmp_path / "tiny.json", valid_annotation()))
    with pytest.raises(AnnotationError, match=r"tiny\.json: images\[0\]\.file: image .*front\.png is absent"):
        evaluate_recording(ConstantSegmenter(), annotation, tmp_path)
