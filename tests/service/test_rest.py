"""REST end to end against a real uvicorn: a rendered frame set in, the BEV grid out in JSON, PNG and
raw bytes that agree with each other, with the rig's metadata and with the in-process pipeline;
fusion-only grids equal to the synthetic world's oracle; the read-only routes, health and metrics."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bev_service.calib.rigfile import rig_from_yaml
from bev_service.classes import CLASSES, NUM_CLASSES, palette
from bev_service.geometry.grid import EGO, UNKNOWN
from bev_service.geometry.projector import BevProjector
from bev_service.geometry.rig import Rig
from bev_service.runtime.pipeline import BevPipeline
from bev_service.runtime.torch_backend import TorchSegmenter
from bev_service.shipped import PRUNED_MODEL
from bev_service.synth import RenderedFrameSet
from bev_service.training.evaluate import Confusion, seen_cells
from tests.service.conftest import FRAME_SIZE_HW, Files, LiveServer, running_server

# The shipped network; BEV_TEST_SHIPPED_MODEL points the end-to-end test at another candidate.
SHIPPED_MODEL = Path(os.environ.get("BEV_TEST_SHIPPED_MODEL", PRUNED_MODEL))
SHIPPED_GROUND_MIOU_FLOOR = 0.5


def png_ids(data: bytes) -> np.ndarray:
    """A palette PNG's pixel values (the class ids), read with Pillow independently of the service's codec."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "P", (image.format, image.mode)
        return np.asarray(image).copy()


def post_bev(base: str, files: Files, **kwargs: Any) -> httpx.Response:
    reply = httpx.post(f"{base}/v1/bev", files=files, timeout=60, **kwargs)
    assert reply.status_code == 200, reply.text
    return reply


def json_grid(reply: httpx.Response) -> np.ndarray:
    return png_ids(base64.b64decode(reply.json()["grid"]["png_base64"]))


def test_frame_set_is_half_the_calibrated_size(frame_set: RenderedFrameSet, default_rig: Rig) -> None:
    """The frames sent below are 480x320: smaller than the rig's 960x640 by a whole factor."""
    for camera in default_rig.cameras:
        with Image.open(io.BytesIO(frame_set.jpeg[camera.name])) as image:
            assert image.format == "JPEG"
            assert (image.height, image.width) == FRAME_SIZE_HW
        assert camera.image_size_hw == (FRAME_SIZE_HW[0] * 2, FRAME_SIZE_HW[1] * 2)


def test_json_png_and_raw_replies_hold_the_same_grid(server: LiveServer, image_files: Files, default_rig: Rig) -> None:
    base = server.base_url
    as_json = post_bev(base, image_files)
    grid = json_grid(as_json)
    assert grid.shape == default_rig.grid.shape == (400, 400)

    for kwargs in ({"headers": {"Accept": "image/png"}}, {"params": {"format": "png"}}):
        reply = post_bev(base, image_files, **kwargs)
        assert reply.headers["content-type"] == "image/png", kwargs
        np.testing.assert_array_equal(png_ids(reply.content), grid)

    for kwargs in ({"headers": {"Accept": "application/octet-stream"}}, {"params": {"format": "raw"}}):
        reply = post_bev(base, image_files, **kwargs)
        assert reply.headers["content-type"] == "application/octet-stream", kwargs
        rows, cols = int(reply.headers["x-bev-rows"]), int(reply.headers["x-bev-cols"])
        assert (rows, cols) == grid.shape and reply.headers["x-bev-rig"] == "default"
        assert len(reply.content) == rows * cols
        np.testing.assert_array_equal(np.frombuffer(reply.content, np.uint8).reshape(rows, cols), grid)


def test_json_metadata_matches_the_rig_and_model(
    server: LiveServer, image_files: Files, default_rig: Rig, tiny_weights: Path
) -> None:
    body = post_bev(server.base_url, image_files).json()
    assert body["rig"] == "default" and body["rig_fingerprint"] == default_rig.fingerprint
    assert body["model"] == tiny_weights.name and body["backend"] == "torch-cpu" and body["mode"] == "images"
    grid = body["grid"]
    assert grid.pop("png_base64") and grid.pop("encoding") == "png"
    assert grid == default_rig.grid.metadata()
    assert (grid["unknown_value"], grid["ego_value"]) == (UNKNOWN, EGO)
    assert {"decode", "resize", "segment", "warp", "encode", "total"} <= set(body["timing_ms"])
    assert all(v >= 0 for v in body["timing_ms"].values())


def test_grid_palette_is_the_class_table(server: LiveServer, image_files: Files) -> None:
    """A viewer shows the PNG as it is: its palette holds each class's colour at the class id."""
    reply = post_bev(server.base_url, image_files, params={"format": "png"})
    with Image.open(io.BytesIO(reply.content)) as image:
        colours = np.frombuffer(bytes(image.getpalette() or []), np.uint8).reshape(-1, 3)
    table = httpx.get(server.url("/v1/classes")).json()
    for row in table:
        assert colours[row["id"]].tolist() == row["color_rgb"], row["name"]
    np.testing.assert_array_equal(colours[:NUM_CLASSES], palette()[:NUM_CLASSES])


def test_grid_equals_the_in_process_pipeline(
    server: LiveServer, frame_set: RenderedFrameSet, image_files: Files, default_rig: Rig, tiny_weights: Path
) -> None:
    """The service adds transport, not arithmetic: same model, same rig, same frames, the same grid;
    cells no camera sees are UNKNOWN, the footprint EGO, every other cell a class."""
    grid = json_grid(post_bev(server.base_url, image_files))
    segmenter = TorchSegmenter.from_file(tiny_weights, device="cpu")
    pipeline = BevPipeline(default_rig, segmenter, encoder=None)
    try:
        expected = pipeline.run(frame_set.jpeg).grid
        seen = seen_cells(pipeline.projector, segmenter.input_size_hw)
    finally:
        pipeline.close()
    np.testing.assert_array_equal(grid, expected)
    assert (grid[seen] < NUM_CLASSES).all()
    assert set(np.unique(grid[~seen])) <= {EGO, UNKNOWN} and (grid == EGO).any()


def test_fusion_only_reproduces_the_oracle(
    make_server: Callable[..., LiveServer], wide_weights_file: Path, frame_set: RenderedFrameSet, label_files: Files
) -> None:
    """labels=true: the true per-camera label maps warped and fused by the service equal the synthetic
    world's oracle BEV (the same warp of the same labels at the same resolution) on every cell. The
    network never runs, so this is the service's geometry checked against the world's own."""
    wide = make_server(model=wide_weights_file, warmup=False)
    as_form = post_bev(wide.base_url, label_files, data={"labels": "true"})
    as_query = post_bev(wide.base_url, label_files, params={"labels": "true", "format": "raw"})
    assert as_form.json()["mode"] == "labels"
    grid = json_grid(as_form)
    np.testing.assert_array_equal(np.frombuffer(as_query.content, np.uint8).reshape(grid.shape), grid)
    seen = grid < NUM_CLASSES
    assert seen.mean() > 0.9, "most of the grid is seen by some camera"
    agreement = float((grid == frame_set.bev_oracle)[seen].mean())
    assert agreement == 1.0, f"fusion-only grid agrees with the oracle on {agreement:.4%} of seen cells"
    np.testing.assert_array_equal(grid, frame_set.bev_oracle)


def test_fusion_only_at_network_resolution_tracks_the_oracle(
    server: LiveServer, frame_set: RenderedFrameSet, label_files: Files
) -> None:
    """With the tiny network's 64x96 input the label maps are resampled (nearest) before the warp, so
    thin classes lose cells; the bulk still matches the oracle."""
    grid = json_grid(post_bev(server.base_url, label_files, data={"labels": "true"}))
    seen = (grid < NUM_CLASSES) & (frame_set.bev_oracle < NUM_CLASSES)
    agreement = float((grid == frame_set.bev_oracle)[seen].mean())
    assert agreement > 0.85, agreement


def test_classes(server: LiveServer) -> None:
    table = httpx.get(server.url("/v1/classes")).json()
    by_id = {row["id"]: row for row in table}
    assert len(by_id) == len(table) == NUM_CLASSES + 2
    for c in CLASSES:
        assert by_id[c.id]["name"] == c.name and by_id[c.id]["color_rgb"] == list(c.color_rgb)
    assert by_id[EGO]["name"] == "ego" and by_id[UNKNOWN]["name"] == "unknown"
    required = {"road", "lane_marking", "curb_sidewalk", "terrain", "vehicle", "pedestrian", "static_obstacle", "background"}
    assert required <= {row["name"] for row in table}


def test_model(server: LiveServer, tiny_weights: Path) -> None:
    info = httpx.get(server.url("/v1/model")).json()
    assert info["file"] == tiny_weights.name and info["backend"] == "torch-cpu"
    assert info["sha256"] == hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert info["input_size_hw"] == [64, 96] and info["input_pixels"] == 64 * 96
    assert info["default_rig_input_size_wh"] == {name: [96, 64] for name in ("front", "left", "rear", "right")}


def test_rigs_list_and_one_rig(server: LiveServer, default_rig: Rig) -> None:
    listing = httpx.get(server.url("/v1/rigs")).json()
    assert listing["default"] == "default"
    (summary,) = [r for r in listing["rigs"] if r["id"] == "default"]
    assert summary["default"] is True and summary["fingerprint"] == default_rig.fingerprint
    assert [c["name"] for c in summary["cameras"]] == list(default_rig.camera_names)
    assert all(c["image_size_wh"] == [960, 640] for c in summary["cameras"])
    assert summary["grid"] == default_rig.grid.metadata()

    one = httpx.get(server.url("/v1/rigs/default")).json()
    assert one["fingerprint"] == default_rig.fingerprint
    assert rig_from_yaml(one["yaml"]).fingerprint == default_rig.fingerprint, "the served YAML is the rig"
    as_yaml = httpx.get(server.url("/v1/rigs/default"), headers={"Accept": "application/yaml"})
    assert as_yaml.headers["content-type"].startswith("application/yaml")
    assert yaml.safe_load(as_yaml.text)["rig_id"] == "default"

    missing = httpx.get(server.url("/v1/rigs/no-such-rig"))
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_rig"
    assert "no-such-rig" in missing.json()["detail"] and "default" in missing.json()["detail"]


def test_coverage_png(server: LiveServer, default_rig: Rig) -> None:
    first = httpx.get(server.url("/v1/rigs/default/coverage.png"), timeout=60)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(first.content)) as image:
        assert image.mode == "RGB" and image.height >= default_rig.grid.rows and image.width > image.height
        picture = np.asarray(image)
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > len(default_rig.cameras), "one colour per camera at least"
    assert httpx.get(server.url("/v1/rigs/default/coverage.png")).content == first.content
    assert httpx.get(server.url("/v1/rigs/nope/coverage.png")).status_code == 404


def test_health_and_readiness(server: LiveServer) -> None:
    health = httpx.get(server.url("/healthz"))
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = httpx.get(server.url("/readyz"))
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def samples(text: str) -> Iterator[Sample]:
    for family in text_string_to_metric_families(text):
        yield from family.samples


def frame_sets_total(base: str, source: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    match = re.search(rf'^bev_frame_sets_total\{{source="{source}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_frame_sets(server: LiveServer, image_files: Files) -> None:
    reply = httpx.get(server.url("/metrics"))
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    before = frame_sets_total(server.base_url, "rest")
    for _ in range(2):
        post_bev(server.base_url, image_files)
    assert frame_sets_total(server.base_url, "rest") == before + 2
    text = httpx.get(server.url("/metrics")).text
    for name in ("bev_http_requests_total", "bev_stage_seconds_bucket", "bev_queue_depth", "bev_stream_dropped_total"):
        assert re.search(rf"^{name}[{{ ]", text, re.MULTILINE), f"{name} missing from /metrics"
    assert re.search(r'^bev_stage_seconds_count\{stage="segment"\} [1-9]', text, re.MULTILINE)


def test_fleet_metrics_of_a_single_process_are_its_own_labelled_with_it(server: LiveServer, image_files: Files) -> None:
    post_bev(server.base_url, image_files)
    own = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples(httpx.get(server.url("/metrics")).text)}
    reply = httpx.get(server.url("/metrics/fleet"))
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    fleet = list(samples(reply.text))
    assert [s.value for s in fleet if s.name == "bev_fleet_replicas"] == [1.0]
    replicas = {s.labels.get("replica") for s in fleet if s.name != "bev_fleet_replicas"}
    assert len(replicas) == 1 and None not in replicas
    labelled = {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "replica"))): s.value for s in fleet}
    counted = [k for k in own if k[0] == "bev_frame_sets_total"]
    assert counted and all(labelled[k] == own[k] for k in counted)  # nothing answered between the two reads
    assert set(own) <= set(labelled)  # every series of the process, under its replica's name


def test_not_ready_without_a_model(settings_for: Callable[..., Any], tmp_path: Path, image_files: Files) -> None:
    """A missing model: the process is alive, /readyz says why it is not ready, /v1 answers 503 with Retry-After."""
    missing = tmp_path / "missing.pt"
    with running_server(settings_for(model=missing), ready=False) as live, httpx.Client(base_url=live.base_url) as client:
        for _ in range(200):
            ready = client.get("/readyz")
            if ready.json()["detail"] != "loading":
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert str(missing) in ready.json()["detail"]
        assert client.get("/healthz").status_code == 200
        refused = client.post("/v1/bev", files=image_files)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"] == "not_ready" and str(missing) in refused.json()["detail"]


def ground_class_miou(conf: Confusion) -> float:
    """mIoU over the classes that lie on the ground: the flat-ground warp is exact for them, so they
    measure the network; objects with height smear even under the oracle (~0.3 IoU for vehicles)."""
    iou = conf.iou()
    ground = [c.id for c in CLASSES if c.ground and np.isfinite(iou[c.id])]
    return float(np.mean(iou[ground]))


@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason=f"{SHIPPED_MODEL} is not trained yet (make train)")
def test_shipped_model_end_to_end(settings_for: Callable[..., Any], frame_sets: list[RenderedFrameSet], default_rig: Rig) -> None:
    """The shipped network behind the service: rendered frame sets in, grids whose BEV mIoU against the
    world's true BEV (seen cells, ground classes) is above the floor."""
    with running_server(settings_for(model=SHIPPED_MODEL, backend="auto")) as live:
        info = httpx.get(live.url("/v1/model")).json()
        conf, oracle = Confusion(NUM_CLASSES), Confusion(NUM_CLASSES)
        seen = seen_cells(BevProjector(default_rig), tuple(info["input_size_hw"]))
        for fs in frame_sets:
            reply = httpx.post(
                live.url("/v1/bev"), files={n: (f"{n}.jpg", fs.jpeg[n], "image/jpeg") for n in fs.jpeg}, timeout=60
            )
            assert reply.status_code == 200, reply.text
            conf.update(json_grid(reply), fs.bev_truth, seen)
            oracle.update(fs.bev_oracle, fs.bev_truth, seen)
    ground, everything = ground_class_miou(conf), conf.miou()
    ceiling = ground_class_miou(oracle)
    assert ground > SHIPPED_GROUND_MIOU_FLOOR, (
        f"ground-class BEV mIoU {ground:.3f} (all classes {everything:.3f}; oracle ceiling {ceiling:.3f}) "
        f"is under the floor {SHIPPED_GROUND_MIOU_FLOOR}"
    )
