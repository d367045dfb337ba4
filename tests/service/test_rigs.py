"""Rig PUT against a real uvicorn: bad files refused naming the field, bad ids refused without a file
written anywhere, and a rig swapped under concurrent load with every request answered entirely by
the old rig or entirely by the new one; the stored rig survives a restart."""

from __future__ import annotations

import base64
import copy
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from bev_service.calib.rigfile import load_rig, rig_from_yaml, save_rig
from bev_service.geometry.grid import EGO
from bev_service.geometry.rig import Rig
from bev_service.geometry.transforms import quaternion_from_rotation, vehicle_from_camera_mount
from bev_service.runtime.pipeline import BevPipeline
from bev_service.runtime.torch_backend import TorchSegmenter
from bev_service.synth import RenderedFrameSet
from tests.conftest import DEFAULT_RIG
from tests.service.conftest import Files, LiveServer, as_files, label_png, running_server

YAML = {"content-type": "application/yaml"}


def default_data() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_RIG.read_text())
    assert isinstance(data, dict)
    return data


def as_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def with_front_pitch(data: dict[str, Any], pitch_down_deg: float) -> dict[str, Any]:
    """The rig with its front camera tilted to ``pitch_down_deg`` (30 in the default rig)."""
    changed = copy.deepcopy(data)
    front = next(c for c in changed["cameras"] if c["name"] == "front")
    pose = vehicle_from_camera_mount(front["vehicle_from_camera"]["translation_m"], 0.0, pitch_down_deg)
    front["vehicle_from_camera"]["quaternion_wxyz"] = [float(v) for v in quaternion_from_rotation(pose[:3, :3])]
    return changed


def with_cell_size(data: dict[str, Any], cell_size_m: float) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    changed["grid"]["cell_size_m"] = cell_size_m
    return changed


def png_ids(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).copy()


@pytest.fixture(scope="module")
def rigs_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server()


def files_in(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# -- bad rig files ----------------------------------------------------------------------------------


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return changed


BAD_FILES: dict[str, tuple[Callable[[dict[str, Any]], str | bytes], tuple[str, ...]]] = {
    "not-yaml": (lambda d: "rig_id: [default\ngrid: {", ("YAML",)),
    "not-a-mapping": (lambda d: "- front\n- rear\n", ("mapping",)),
    "negative-cell": (lambda d: as_yaml(_set(d, ("grid", "cell_size_m"), -0.05)), ("grid.cell_size_m",)),
    "cell-not-a-number": (lambda d: as_yaml(_set(d, ("grid", "cell_size_m"), "fine")), ("grid.cell_size_m",)),
    "fx-not-a-number": (lambda d: as_yaml(_set(d, ("cameras", 1, "model", "fx"), "wide")), ("camera 'left'", "model.fx")),
    "unknown-field": (lambda d: as_yaml({**d, "colour": "red"}), ("colour",)),
    "no-pose": (
        lambda d: as_yaml(_set(d, ("cameras", 2), {k: v for k, v in d["cameras"][2].items() if k != "vehicle_from_camera"})),
        ("camera 'rear'", "vehicle_from_camera"),
    ),
    "camera-twice": (lambda d: as_yaml({**d, "cameras": [*d["cameras"], d["cameras"][0]]}), ("'front'", "twice")),
    "ragged-grid": (lambda d: as_yaml(_set(d, ("grid", "cell_size_m"), 0.3)), ("grid", "whole number")),
    "camera-sees-no-ground": (
        lambda d: as_yaml(_set(d, ("cameras", 0, "vehicle_from_camera", "translation_m"), [500.0, 0.0, 0.8])),
        ("camera 'front'", "sees no ground"),
    ),
    "id-differs-from-path": (lambda d: as_yaml({**d, "rig_id": "other"}), ("rig_id", "other")),
    "not-utf8": (lambda d: b"rig_id: \xff\xfe", ("UTF-8",)),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_rig_file_is_refused_naming_the_field(case: str, rigs_server: LiveServer) -> None:
    make, words = BAD_FILES[case]
    rig_id = "candidate"
    before = files_in(rigs_server.settings.rigs_dir)
    reply = httpx.put(rigs_server.url(f"/v1/rigs/{rig_id}"), content=make({**default_data(), "rig_id": rig_id}), headers=YAML)
    assert reply.status_code == 422, reply.text
    body = reply.json()
    assert body["error"] == "bad_rig", body
    for word in words:
        assert word in body["detail"], f"{word!r} not in {body['detail']!r}"
    assert files_in(rigs_server.settings.rigs_dir) == before
    assert httpx.get(rigs_server.url(f"/v1/rigs/{rig_id}")).status_code == 404


def test_rig_put_needs_a_yaml_or_json_content_type(rigs_server: LiveServer) -> None:
    data = {**default_data(), "rig_id": "as-json"}
    reply = httpx.put(rigs_server.url("/v1/rigs/as-json"), content=json.dumps(data), headers={"content-type": "application/xml"})
    assert reply.status_code == 415 and reply.json()["error"] == "unsupported_media_type", reply.text
    reply = httpx.put(rigs_server.url("/v1/rigs/as-json"), json=data, timeout=60)
    assert reply.status_code == 201, reply.text
    assert reply.json()["fingerprint"] == rig_from_yaml(as_yaml(data)).fingerprint
    assert httpx.delete(rigs_server.url("/v1/rigs/as-json")).status_code == 204


def test_huge_grid_is_refused_not_a_server_error(rigs_server: LiveServer) -> None:
    """A cell size of 10 µm over the default 20 m asks for a 2,000,000² grid: a bad rig file, not a crash."""
    data = {**with_cell_size(default_data(), 1e-5), "rig_id": "huge"}
    reply = httpx.put(rigs_server.url("/v1/rigs/huge"), content=as_yaml(data), headers=YAML, timeout=60)
    assert reply.status_code == 422 and reply.json()["error"] == "bad_rig", reply.text
    assert "grid" in reply.json()["detail"]


def test_a_rig_of_square_cameras_runs_at_its_own_shape(rigs_server: LiveServer) -> None:
    """Square cameras against a network trained on 3:2 frames: each camera runs square, at about the
    network's training pixels; the rig's summary and the reply say at what size."""
    data = {**default_data(), "rig_id": "square"}
    data["grid"]["cell_size_m"] = 0.1
    for camera in data["cameras"]:
        camera["image_size_hw"] = [640, 640]
        camera["model"]["cx"] = 319.5
    reply = httpx.put(rigs_server.url("/v1/rigs/square"), content=as_yaml(data), headers=YAML, timeout=60)
    assert reply.status_code == 201, reply.text
    model = httpx.get(rigs_server.url("/v1/model")).json()
    sizes = {c["name"]: c["input_size_wh"] for c in reply.json()["cameras"]}
    (w, h), *others = sizes.values()
    assert w == h and all(s == [w, h] for s in others) and abs(w * h / model["input_pixels"] - 1) < 0.1, (sizes, model)
    square = io.BytesIO()
    Image.new("RGB", (640, 640), (90, 90, 90)).save(square, "JPEG")
    files = {name: (f"{name}.jpg", square.getvalue(), "image/jpeg") for name in sizes}
    bev = httpx.post(rigs_server.url("/v1/bev"), files=files, data={"rig": "square"}, timeout=60)
    assert bev.status_code == 200, bev.text
    assert bev.json()["input_size_wh"] == sizes
    assert httpx.delete(rigs_server.url("/v1/rigs/square")).status_code == 204


# -- rig ids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_path_id", "rig_id"),
    [
        ("..%2Fetc", "../etc"),
        ("..%2F..%2Fescaped", "../../escaped"),
        ("a%2Fb", "a/b"),
        ("a/b", "a/b"),
        ("%2E%2E", ".."),
        ("..", ".."),
        (".hidden", ".hidden"),
        ("a..b", "a..b"),
        ("-dash", "-dash"),
        ("with%20space", "with space"),
        ("%C3%BCml", "üml"),
        ("x" * 65, "x" * 65),
        ("%00nul", "\0nul"),
    ],
)
def test_bad_rig_id_writes_nothing(raw_path_id: str, rig_id: str, rigs_server: LiveServer) -> None:
    """The id is the file name: anything but letters, digits, '.', '_', '-' (no '..', no leading dot) is
    refused, and nothing appears in or around rigs_dir."""
    rigs_dir = rigs_server.settings.rigs_dir
    around = rigs_dir.parent
    before = files_in(around)
    body = as_yaml({**default_data(), "rig_id": rig_id})
    reply = httpx.put(f"{rigs_server.base_url}/v1/rigs/{raw_path_id}", content=body, headers=YAML)
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.text)
    if reply.status_code == 422:
        assert reply.json()["error"] == "bad_rig" and "rig id" in reply.json()["detail"], reply.text
    assert files_in(around) == before
    assert not (around / "etc.yaml").exists() and not (around.parent / "escaped.yaml").exists()


# -- a new rig --------------------------------------------------------------------------------------


def test_put_a_new_rig_and_use_it(rigs_server: LiveServer, image_files: Files) -> None:
    data = {**with_cell_size(default_data(), 0.1), "rig_id": "coarse"}
    created = httpx.put(rigs_server.url("/v1/rigs/coarse"), content=as_yaml(data), headers=YAML, timeout=60)
    assert created.status_code == 201, created.text
    expected = rig_from_yaml(as_yaml(data))
    assert created.json()["fingerprint"] == expected.fingerprint and created.json()["grid"]["rows"] == 200
    stored = rigs_server.settings.rigs_dir / "coarse.yaml"
    assert load_rig(stored).grid == expected.grid
    assert not [p for p in rigs_server.settings.rigs_dir.iterdir() if p.name.endswith(".tmp")], "no temporary file left"

    assert "coarse" in [r["id"] for r in httpx.get(rigs_server.url("/v1/rigs")).json()["rigs"]]
    reply = httpx.post(
        rigs_server.url("/v1/bev"), files=image_files, data={"rig": "coarse"}, params={"format": "raw"}, timeout=60
    )
    assert reply.status_code == 200 and reply.headers["x-bev-rig"] == "coarse", reply.text
    assert (int(reply.headers["x-bev-rows"]), int(reply.headers["x-bev-cols"])) == (200, 200) and len(reply.content) == 200 * 200
    coverage = httpx.get(rigs_server.url("/v1/rigs/coarse/coverage.png"), timeout=60)
    assert coverage.status_code == 200 and coverage.headers["content-type"] == "image/png"

    again = httpx.put(rigs_server.url("/v1/rigs/coarse"), content=as_yaml(data), headers=YAML, timeout=60)
    assert again.status_code == 200, "a second PUT replaces: 200, not 201"


# -- the swap under load ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What a request answered by one rig version must hold."""

    grid_from_labels: np.ndarray  # (rows, cols) the fusion of the true label maps
    fixed: np.ndarray  # (rows, cols) bool: cells that are UNKNOWN or EGO whatever the network says


def expected_for(rig: Rig, label_maps: dict[str, bytes], weights: Path) -> Expected:
    pipeline = BevPipeline(rig, TorchSegmenter.from_file(weights, device="cpu"), encoder=None)
    try:
        grid = pipeline.fuse(label_maps).grid
        fixed = pipeline.projector.label_table(pipeline.input_sizes_hw).fixed.reshape(pipeline.projector.grid_shape)
    finally:
        pipeline.close()
    return Expected(grid, fixed)


@dataclass
class Answer:
    started: float
    fingerprint: str
    grid: np.ndarray
    metadata_shape: tuple[int, int]


@dataclass
class LoadThread:
    """Posts one kind of frame set (label maps or images) in a loop, JSON replies, and keeps them all."""

    base_url: str
    files: Files
    labels: bool
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not stop.is_set():
                started = time.perf_counter()
                reply = client.post("/v1/bev", files=self.files, data={"labels": "true"} if self.labels else {})
                if reply.status_code != 200:
                    self.failures.append(f"{reply.status_code} {reply.text[:200]}")
                    continue
                body = reply.json()
                grid = png_ids(base64.b64decode(body["grid"]["png_base64"]))
                self.answers.append(Answer(started, body["rig_fingerprint"], grid, (body["grid"]["rows"], body["grid"]["cols"])))

    def answered_since(self, t: float) -> int:
        return sum(a.started > t for a in self.answers)


def test_rig_swap_under_load_answers_each_request_with_one_rig(
    make_server: Callable[..., LiveServer],
    settings_for: Callable[..., Any],
    frame_set: RenderedFrameSet,
    image_files: Files,
    tiny_weights: Path,
) -> None:
    """Three clients post all along while the default rig (a stored one, by BEV_DEFAULT_RIG_ID) is replaced
    twice (front camera tilted, then a coarser grid). Each reply's grid is exactly what its reported rig
    gives (fusion-only replies to the cell; image replies in their UNKNOWN/EGO pattern and shape), versions
    only move forward, and a request started after a PUT returned sees that PUT's rig."""
    label_maps = {name: label_png(frame_set.labels[name]) for name in frame_set.camera_names}
    yard = {**default_data(), "rig_id": "yard"}
    versions = [yard, with_front_pitch(yard, 40.0)]
    versions.append(with_cell_size(versions[1], 0.1))
    rigs = [rig_from_yaml(as_yaml(v)) for v in versions]
    assert len({r.fingerprint for r in rigs}) == 3
    expected = {r.fingerprint: expected_for(r, label_maps, tiny_weights) for r in rigs}
    assert not np.array_equal(expected[rigs[0].fingerprint].grid_from_labels, expected[rigs[1].fingerprint].grid_from_labels)
    order = {r.fingerprint: i for i, r in enumerate(rigs)}
    rigs_dir = settings_for().rigs_dir
    save_rig(rigs[0], rigs_dir / "yard.yaml")
    live = make_server(rigs_dir=rigs_dir, default_rig_id="yard")

    loads = [
        LoadThread(live.base_url, as_files(label_maps, "png", "image/png"), labels=True),
        LoadThread(live.base_url, as_files(label_maps, "png", "image/png"), labels=True),
        LoadThread(live.base_url, image_files, labels=False),
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=load.run, args=(stop,), name=f"rig-load-{i}") for i, load in enumerate(loads)]
    for thread in threads:
        thread.start()
    put_done: list[float] = [0.0]
    try:
        for version in versions[1:]:
            wait_for_answers(loads, since=put_done[-1])
            reply = httpx.put(live.url("/v1/rigs/yard"), content=as_yaml(version), headers=YAML, timeout=120)
            assert reply.status_code == 200, reply.text
            put_done.append(time.perf_counter())
        wait_for_answers(loads, since=put_done[-1])
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    for load in loads:
        assert not load.failures, load.failures[:3]
        seen_versions = []
        for answer in load.answers:
            assert answer.fingerprint in expected, f"a reply from an unknown rig {answer.fingerprint}"
            want = expected[answer.fingerprint]
            assert answer.grid.shape == answer.metadata_shape == want.fixed.shape
            if load.labels:
                np.testing.assert_array_equal(answer.grid, want.grid_from_labels)
            else:
                np.testing.assert_array_equal(answer.grid >= EGO, want.fixed)
            answered_by = order[answer.fingerprint]
            newest_put = max(i for i, t in enumerate(put_done) if i == 0 or t < answer.started)
            assert answered_by >= newest_put, "a request started after a PUT returned was answered with an older rig"
            seen_versions.append(answered_by)
        assert seen_versions == sorted(seen_versions) and set(seen_versions) == {0, 1, 2}

    new = rigs[2]
    stored = live.settings.rigs_dir / "yard.yaml"
    assert load_rig(stored).grid == new.grid
    assert sorted(p.name for p in live.settings.rigs_dir.iterdir()) == ["yard.yaml"]
    assert httpx.get(live.url("/v1/rigs/yard")).json()["grid"]["rows"] == 200

    with running_server(settings_for(rigs_dir=live.settings.rigs_dir, default_rig_id="yard")) as restarted:
        summary = httpx.get(restarted.url("/v1/rigs")).json()
        assert summary["default"] == "yard", summary
        summary = httpx.get(restarted.url("/v1/rigs/yard")).json()
        assert summary["grid"] == new.grid.metadata() and summary["fingerprint"] == load_rig(stored).fingerprint
        reply = httpx.post(restarted.url("/v1/bev"), files=as_files(label_maps, "png", "image/png"), data={"labels": "true"})
        assert reply.status_code == 200, reply.text
        grid = png_ids(base64.b64decode(reply.json()["grid"]["png_base64"]))
        np.testing.assert_array_equal(grid, expected[new.fingerprint].grid_from_labels)


def wait_for_answers(loads: list[LoadThread], since: float, count: int = 2, timeout_s: float = 60.0) -> None:
    """Until every load thread has ``count`` answers to requests started after ``since``."""
    deadline = time.monotonic() + timeout_s
    while not all(load.answered_since(since) >= count for load in loads):
        assert time.monotonic() < deadline, "the load threads stopped answering"
        assert all(not load.failures for load in loads), [load.failures[:1] for load in loads]
        time.sleep(0.01)
