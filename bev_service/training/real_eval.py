"""Scores on real recordings annotated by hand (``evaluation/real/*.json``): image space, the vehicle's own
body, and BEV space, per recording and pooled over recordings.

An annotation file names a recording folder (``$BEV_REAL_DATA/<recording>``), how to build its rig (one of
the calibration importers, or a rig file), one image per camera with polygons in its pixels, and polygons
on the ground in the vehicle frame. Regions are painted in order, later over earlier; what no region
covers is unjudged. The format is documented in ``evaluation/real/README.md``.

Each camera's image runs through the network at the size the service uses for that rig
(``runtime.pipeline.input_sizes``: same aspect ratio, the network's trained pixel count); the labels are
scaled back to the camera's calibrated size (nearest) for the image scores, and warped through the rig's
tables at the network's size, as the service warps them, for the BEV scores. BEV cells that no camera sees
(and the ego footprint) are not scored. IoU arithmetic is ``training.evaluate.Confusion``'s; mIoU averages
the classes present in the reference.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from bev_service.calib.importers import import_kdt_json, import_ocam_json, import_surround_view_yaml
from bev_service.calib.rigfile import load_rig
from bev_service.classes import CLASSES
from bev_service.errors import BevError
from bev_service.geometry.grid import BevGrid
from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Rig
from bev_service.imageio import read_image
from bev_service.runtime.pipeline import input_sizes
from bev_service.runtime.resize import resize_images, resize_labels
from bev_service.runtime.segmenter import Segmenter
from bev_service.training.data import IGNORE
from bev_service.training.evaluate import Confusion, body_summary, summary

FORMAT = "bev-real-annotations/1"
BODY = "body"
UNJUDGED = "unjudged"
BODY_VALUE = 254  # the body's value in a rasterised image reference (never a class id, skipped by Confusion)
DEFAULT_REAL_DATA = Path("..") / "shared" / "data" / "real"
IMPORTER_OPTIONS = {"kdt-json": {"units_m"}, "ocam-json": {"heights_m", "cell_size_m", "cells"}, "surround-view-yaml": set()}
IMPORTERS = (*IMPORTER_OPTIONS, "rig-file")
_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point fraction bits: vertices to 1/16 pixel


class AnnotationError(BevError):
    """An annotation file, or the footage it names, is unusable."""


def default_real_data() -> Path:
    """Where the recordings are read from: ``$BEV_REAL_DATA``, else ``../shared/data/real``."""
    return Path(os.environ.get("BEV_REAL_DATA") or DEFAULT_REAL_DATA)


@dataclass(frozen=True)
class Region:
    label: str  # a class name, BODY or UNJUDGED
    polygon: NDArray[np.float64]  # (k, 2): image pixels (x right, y down) or vehicle frame (x forward, y left)


@dataclass(frozen=True)
class ImageAnnotation:
    camera: str
    file: str  # relative to the recording folder
    size_hw: tuple[int, int]
    regions: tuple[Region, ...]


@dataclass(frozen=True)
class Annotation:
    path: Path
    recording: str
    rig: dict[str, Any]
    images: tuple[ImageAnnotation, ...]
    bev_regions: tuple[Region, ...]


# --- reading and validation ---------------------------------------------------------------------------


def _fail(path: Path, where: str, message: str) -> AnnotationError:
    return AnnotationError(f"{path}: {where}: {message}" if where else f"{path}: {message}")


def _get(data: Any, key: str, path: Path, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise _fail(path, where, f"missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _fail(path, f"{where}.{key}" if where else key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"str": "a string", "list": "a list", "dict": "an object"}.get(k.__name__, k.__name__) for k in kinds)


def _regions(raw: Any, key: str, path: Path, where: str, labels: Sequence[str]) -> tuple[Region, ...]:
    if not isinstance(raw, list):
        raise _fail(path, where, f"expected a list of regions, got {type(raw).__name__}")
    out = []
    for i, entry in enumerate(raw):
        at = f"{where}[{i}]"
        label = _get(entry, "class", path, at, str)
        if label not in labels:
            raise _fail(path, f"{at}.class", f"unknown class {label!r}; expected one of {', '.join(labels)}")
        points = _get(entry, key, path, at, list)
        try:
            polygon = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise _fail(path, f"{at}.{key}", f"expected [[x, y], ...] numbers ({exc})") from exc
        if polygon.ndim != 2 or polygon.shape[1] != 2 or not np.isfinite(polygon).all():
            raise _fail(path, f"{at}.{key}", f"expected [[x, y], ...] finite numbers, got shape {polygon.shape}")
        if len(polygon) < 3:
            raise _fail(path, f"{at}.{key}", f"a polygon needs at least 3 points, got {len(polygon)}")
        out.append(Region(label, polygon))
    return tuple(out)


def _image(entry: Any, path: Path, where: str, labels: Sequence[str]) -> ImageAnnotation:
    camera = _get(entry, "camera", path, where, str)
    file = _get(entry, "file", path, where, str)
    size = _get(entry, "size_wh", path, where, list)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise _fail(path, f"{where}.size_wh", f"expected [width, height] positive whole numbers, got {size}")
    regions = _regions(_get(entry, "regions", path, where, list), "polygon", path, f"{where}.regions", labels)
    w, h = size
    for i, region in enumerate(regions):
        (x0, y0), (x1, y1) = region.polygon.min(axis=0), region.polygon.max(axis=0)
        if x0 < -0.5 or y0 < -0.5 or x1 > w - 0.5 or y1 > h - 0.5:  # pixel centres at whole numbers
            box = f"x {x0:g}..{x1:g}, y {y0:g}..{y1:g}"
            raise _fail(path, f"{where}.regions[{i}].polygon", f"{box} leaves the {w}x{h} image")
    return ImageAnnotation(camera, file, (h, w), regions)


def read_annotation(path: str | Path) -> Annotation:
    """An annotation file, checked field by field; AnnotationError names the file and the field."""
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AnnotationError(f"{source}: cannot read the annotation file ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{source}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _fail(source, "", f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise _fail(source, "format", f"expected {FORMAT!r}, got {data.get('format')!r}")
    recording = _get(data, "recording", source, "", str)
    if not recording or Path(recording).name != recording or recording in (".", ".."):
        raise _fail(source, "recording", f"expected a folder name, got {recording!r}")
    rig = _get(data, "rig", source, "", dict)
    _check_rig_spec(rig, source)
    image_labels = (*(c.name for c in CLASSES), BODY, UNJUDGED)
    raw_images = _get(data, "images", source, "", list)
    images = tuple(_image(entry, source, f"images[{i}]", image_labels) for i, entry in enumerate(raw_images))
    cameras = [im.camera for im in images]
    if not images or len(set(cameras)) != len(cameras):
        raise _fail(source, "images", f"expected one entry per camera, got cameras {cameras}")
    bev = data.get("bev", {"regions": []})
    bev_labels = (*(c.name for c in CLASSES), UNJUDGED)
    bev_regions = _regions(_get(bev, "regions", source, "bev", list), "polygon_m", source, "bev.regions", bev_labels)
    return Annotation(source, recording, rig, images, bev_regions)


def _check_rig_spec(rig: dict[str, Any], path: Path) -> None:
    importer = _get(rig, "importer", path, "rig", str)
    if importer not in IMPORTERS:
        raise _fail(path, "rig.importer", f"unknown importer {importer!r}; expected one of {', '.join(IMPORTERS)}")
    _get(rig, "path", path, "rig", str)
    options = rig.get("options", {})
    allowed = IMPORTER_OPTIONS.get(importer, set())
    if not isinstance(options, dict) or set(options) - allowed:
        unknown = sorted(set(options) - allowed) if isinstance(options, dict) else options
        raise _fail(path, "rig.options", f"{unknown} not options of {importer} (allowed: {sorted(allowed) or 'none'})")
    grid = rig.get("grid", {})
    if not isinstance(grid, dict) or set(grid) - {"x_range_m", "y_range_m", "cell_size_m"}:
        raise _fail(path, "rig.grid", f"expected an object of x_range_m, y_range_m, cell_size_m, got {grid}")


# --- rig and footage ----------------------------------------------------------------------------------


def recording_folder(annotation: Annotation, data_root: str | Path) -> Path:
    """The recording's footage folder; AnnotationError naming it when it is absent."""
    folder = Path(data_root) / annotation.recording
    if not folder.is_dir():
        raise AnnotationError(
            f"{annotation.path}: footage folder {folder} is absent (the real recordings are read from "
            f"--real-data or $BEV_REAL_DATA, by default {DEFAULT_REAL_DATA})"
        )
    return folder


def build_rig(annotation: Annotation, folder: Path) -> Rig:
    """The recording's rig through the annotation's importer (and its grid override), checked against the images."""
    spec, path = annotation.rig, annotation.path
    source = folder / spec["path"]
    options = dict(spec.get("options", {}))
    try:
        if spec["importer"] == "kdt-json":
            rig = import_kdt_json(source, **options).rig
        elif spec["importer"] == "ocam-json":
            rig = import_ocam_json(source, **options).rig
        elif spec["importer"] == "surround-view-yaml":
            rig = import_surround_view_yaml(source).rig
        else:
            rig = load_rig(source)
        if spec.get("grid"):
            rig = dataclasses.replace(rig, grid=_grid_override(rig.grid, spec["grid"]))
    except (BevError, ValueError, TypeError, IndexError) as exc:
        raise _fail(path, "rig", f"cannot build the rig from {source}: {exc}") from exc
    annotated = [im.camera for im in annotation.images]
    if sorted(annotated) != sorted(rig.camera_names):
        raise _fail(path, "images", f"expected one image per camera of the rig {list(rig.camera_names)}, got {annotated}")
    for i, image in enumerate(annotation.images):
        calibrated = rig.camera(image.camera).image_size_hw
        if image.size_hw != calibrated:
            got, want = image.size_hw[::-1], calibrated[::-1]
            raise _fail(path, f"images[{i}].size_wh", f"{list(got)}, but camera {image.camera!r} is calibrated at {list(want)}")
    return rig


def _grid_override(grid: BevGrid, override: dict[str, Any]) -> BevGrid:
    """The rig's grid with the annotation's x_range_m, y_range_m or cell_size_m in place of its own."""
    x = override.get("x_range_m", grid.x_range_m)
    y = override.get("y_range_m", grid.y_range_m)
    cell = override.get("cell_size_m", grid.cell_size_m)
    return BevGrid((float(x[0]), float(x[1])), (float(y[0]), float(y[1])), float(cell))


def load_images(annotation: Annotation, folder: Path) -> dict[str, NDArray[np.uint8]]:
    """Each camera's RGB frame, checked against the annotated size."""
    frames = {}
    for i, image in enumerate(annotation.images):
        file = folder / image.file
        if not file.is_file():
            raise _fail(annotation.path, f"images[{i}].file", f"image {file} is absent")
        try:
            frame = read_image(file)
        except BevError as exc:
            raise _fail(annotation.path, f"images[{i}].file", str(exc)) from exc
        if frame.shape[:2] != image.size_hw:
            got = list(frame.shape[1::-1])
            raise _fail(annotation.path, f"images[{i}].size_wh", f"{list(image.size_hw[::-1])}, but {file} is {got}")
        frames[image.camera] = frame
    return frames


# --- rasterising ----------------------------------------------------------------------------------------


def rasterize(
    regions: Iterable[Region],
    size_hw: tuple[int, int],
    values: dict[str, int],
    to_pixels: Callable[[NDArray[np.float64]], NDArray[np.float64]] | None = None,
) -> NDArray[np.uint8]:
    """(h, w) uint8 reference: each region filled with ``values[label]`` in order (later over earlier), IGNORE
    elsewhere. Vertices (x, y) are in pixels with pixel centres at whole numbers, OpenCV's convention
    (``to_pixels`` converts other coordinates to these); ``cv2.fillPoly`` fills the pixels inside the polygon
    and on its outline, vertices taken to 1/16 pixel."""
    out = np.full(size_hw, IGNORE, dtype=np.uint8)
    scale = 1 << _SUBPIXEL_BITS
    for region in regions:
        xy = region.polygon if to_pixels is None else to_pixels(region.polygon)
        fixed = np.round(xy * scale).astype(np.int32)
        cv2.fillPoly(out, [fixed], int(values[region.label]), lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return out


def label_values(class_names: Sequence[str]) -> dict[str, int]:
    """Raster values: class ids in the network's order, BODY_VALUE for the body, IGNORE for unjudged."""
    return {**{name: i for i, name in enumerate(class_names)}, BODY: BODY_VALUE, UNJUDGED: IGNORE}


def rasterize_bev(regions: Iterable[Region], grid: BevGrid, class_names: Sequence[str]) -> NDArray[np.uint8]:
    """The BEV reference on ``grid`` (rows forward to back, columns left to right; DESIGN.md)."""

    def to_pixels(xy_m: NDArray[np.float64]) -> NDArray[np.float64]:
        row_col = grid.cell_from_vehicle_xy(xy_m) - 0.5  # fractional cell -> cell-centre coordinates
        return row_col[:, ::-1]  # (x, y) = (col, row) for OpenCV

    return rasterize(regions, grid.shape, label_values(class_names), to_pixels)


# --- scores ---------------------------------------------------------------------------------------------


@dataclass
class RealScore:
    """Confusions and body counts of one recording, or of several added together."""

    class_names: tuple[str, ...]
    image: Confusion = field(init=False)
    bev: Confusion = field(init=False)
    body: NDArray[np.int64] = field(init=False)  # body pixels by predicted class
    bev_unseen: int = 0  # annotated BEV cells that no camera sees (not scored)
    images: int = 0

    def __post_init__(self) -> None:
        n = len(self.class_names)
        self.image, self.bev = Confusion(n), Confusion(n)
        self.body = np.zeros(n, dtype=np.int64)

    def add_image(self, predicted: NDArray[np.uint8], reference: NDArray[np.uint8]) -> None:
        """One camera's labels against its rasterised reference, both at the camera's size."""
        if predicted.shape != reference.shape:
            raise ValueError(f"prediction {predicted.shape} and reference {reference.shape} differ in shape")
        self.image.update(predicted, reference)
        n = len(self.class_names)
        self.body += np.bincount(predicted[reference == BODY_VALUE], minlength=n)[:n]
        self.images += 1

    def add_bev(self, predicted: NDArray[np.uint8], reference: NDArray[np.uint8], seen: NDArray[np.bool_]) -> None:
        self.bev.update(predicted, reference, seen)
        self.bev_unseen += int(((reference < len(self.class_names)) & ~seen).sum())

    def merge(self, other: RealScore) -> None:
        for mine, theirs in ((self.image, other.image), (self.bev, other.bev)):
            mine.matrix += theirs.matrix
            mine.misses += theirs.misses
        self.body += other.body
        self.bev_unseen += other.bev_unseen
        self.images += other.images

    def report(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "image": _space(self.image, self.class_names),
            "body": body_summary(self.body, self.class_names),
            "bev": {**_space(self.bev, self.class_names), "unseen_cells": self.bev_unseen},
        }


def _space(conf: Confusion, names: tuple[str, ...]) -> dict[str, Any]:
    support = conf.matrix.sum(axis=1) + conf.misses
    return {
        **summary(conf, names),
        "classes_present": [n for n, s in zip(names, support, strict=True) if s > 0],
        "judged": int(support.sum()),
        "confusion": {"rows": "reference", "columns": "predicted", "matrix": conf.matrix.tolist()},
    }


@dataclass
class RealEvaluation:
    """Scores per recording (in the order given) and pooled over them."""

    class_names: tuple[str, ...]
    recordings: dict[str, RealScore] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)

    def pooled(self) -> RealScore:
        total = RealScore(self.class_names)
        for score in self.recordings.values():
            total.merge(score)
        return total

    def report(self) -> dict[str, Any]:
        recordings = {name: {**self.details[name], **score.report()} for name, score in self.recordings.items()}
        return {"format": FORMAT, "classes": list(self.class_names), "recordings": recordings, "pooled": self.pooled().report()}


# --- running ---------------------------------------------------------------------------------------------


def segment_cameras(segmenter: Segmenter, rig: Rig, frames: dict[str, NDArray[np.uint8]]) -> list[NDArray[np.uint8]]:
    """Each camera's labels at the size the service runs it at, in rig order (one network call per size)."""
    sizes = input_sizes(rig, segmenter)
    labels: list[NDArray[np.uint8] | None] = [None] * len(sizes)
    for size in dict.fromkeys(sizes):
        cams = [i for i, s in enumerate(sizes) if s == size]
        batch = np.stack([resize_images(frames[rig.camera_names[i]][None], size)[0] for i in cams])  # (n, h, w, 3)
        out = segmenter.segment(batch).labels_numpy()  # (n, h, w)
        for k, i in enumerate(cams):
            labels[i] = np.ascontiguousarray(out[k])
    assert all(m is not None for m in labels)
    return [m for m in labels if m is not None]


def evaluate_recording(segmenter: Segmenter, annotation: Annotation, data_root: str | Path) -> tuple[RealScore, dict[str, Any]]:
    """One annotated recording's scores, and what was scored (rig, sizes, annotation file)."""
    folder = recording_folder(annotation, data_root)
    rig = build_rig(annotation, folder)
    frames = load_images(annotation, folder)
    names = tuple(segmenter.config.class_names)
    values = label_values(names)
    score = RealScore(names)
    labels = segment_cameras(segmenter, rig, frames)
    cameras = {}
    for image in annotation.images:
        index = rig.camera_names.index(image.camera)
        reference = rasterize(image.regions, image.size_hw, values)
        predicted = resize_labels(labels[index][None], image.size_hw)[0]
        score.add_image(predicted, reference)
        cameras[image.camera] = {"input_size_hw": list(labels[index].shape), "judged_pixels": int((reference < len(names)).sum())}
    if annotation.bev_regions:
        projector = BevProjector(rig)
        sizes = [(int(m.shape[0]), int(m.shape[1])) for m in labels]
        seen = ~projector.label_table(sizes).fixed.reshape(projector.grid_shape)
        score.add_bev(projector.warp_labels(labels), rasterize_bev(annotation.bev_regions, rig.grid, names), seen)
    details = {"annotation": str(annotation.path), "rig_id": rig.rig_id, "grid": rig.grid.metadata(), "cameras": cameras}
    return score, details


def evaluate_real(
    segmenter: Segmenter, paths: Sequence[str | Path], data_root: str | Path | None = None, *, progress: bool = False
) -> RealEvaluation:
    """Every annotation file's recording scored; all files are read and checked before any network runs."""
    annotations = [read_annotation(p) for p in paths]
    root = default_real_data() if data_root is None else Path(data_root)
    for annotation in annotations:
        recording_folder(annotation, root)
    result = RealEvaluation(tuple(segmenter.config.class_names))
    for annotation in tqdm(annotations, desc="real recordings", unit="recording", disable=not progress):
        if annotation.recording in result.recordings:
            raise AnnotationError(f"{annotation.path}: recording {annotation.recording!r} is annotated twice")
        score, details = evaluate_recording(segmenter, annotation, root)
        result.recordings[annotation.recording] = score
        result.details[annotation.recording] = details
    return result


def format_real_table(report: dict[str, Any]) -> str:
    """Per recording and pooled: per-class IoU in image and BEV space, mIoU, and what the body was called."""
    names = list(report["classes"])
    width = max(len(n) for n in [*names, "mIoU"]) + 2
    blocks = [*report["recordings"].items(), ("pooled", report["pooled"])]
    lines: list[str] = []
    for title, scores in blocks:
        image, bev, body = scores["image"], scores["bev"], scores["body"]
        lines.append(f"{title}: {scores['images']} images, {image['judged']} judged pixels, {bev['judged']} judged BEV cells")
        lines.append("class".ljust(width) + "image".rjust(12) + "bev".rjust(12))
        for name in names:
            lines.append(name.ljust(width) + _cell(image["iou"][name]).rjust(12) + _cell(bev["iou"][name]).rjust(12))
        lines.append("mIoU".ljust(width) + _cell(image["miou"]).rjust(12) + _cell(bev["miou"]).rjust(12))
        if body["pixels"]:
            called = ", ".join(f"{n} {v:.3f}" for n, v in body["called"].items() if v)
            lines.append(f"body called a ground class: {body['ground_share']:.3f} of {body['pixels']} pixels ({called})")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
