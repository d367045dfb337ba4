"""The rig store under hostile use, against a real uvicorn: its limits (stored rigs, cameras, cells times
cameras, file size) refuse early with a 4xx naming the setting, the served rig file is read-only, DELETE
removes a stored rig, rig bodies too deep, too large, aliased or out of range are a fast 4xx with no
traceback in the log, and stored rigs' tables are not built at start-up."""

from __future__ import annotations

import copy
import logging
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bev_service.calib.rigfile import rig_from_yaml, save_rig
from bev_service.geometry.rig import Rig
from bev_service.runtime.pipeline import BevPipeline, input_sizes
from bev_service.runtime.segmenter import load_segmenter
from bev_service.service.rigs import RigLimits, RigStore
from tests.conftest import DEFAULT_RIG
from tests.live_server import running_server
from tests.service.conftest import Files, LiveServer

YAML = {"content-type": "application/yaml"}


def rig_data(rig_id: str, cell_size_m: float = 0.5, cameras: int | None = None) -> dict[str, Any]:
    """The default rig under another id, on a coarse grid (quick to build), with its cameras repeated to ``cameras``."""
    data = yaml.safe_load(DEFAULT_RIG.read_text())
    data["rig_id"] = rig_id
    data["grid"]["cell_size_m"] = cell_size_m
    if cameras is not None:
        base = data["cameras"]
        data["cameras"] = [{**copy.deepcopy(base[i % len(base)]), "name": f"cam{i}"} for i in range(cameras)]
    return data


def put(live: LiveServer, rig_id: str, body: str | bytes, headers: dict[str, str] = YAML, timeout: float = 60) -> httpx.Response:
    return httpx.put(live.url(f"/v1/rigs/{rig_id}"), content=body, headers=headers, timeout=timeout)


def check_error(reply: httpx.Response, status: int, kind: str, *words: str) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["error"] == kind, body
    for word in words:
        assert word in body["detail"], f"{word!r} not in {body['detail']!r}"


@pytest.fixture(scope="module")
def store_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(max_rigs=4)


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The test's log (the servers run in this process) must hold no traceback and no ERROR line."""
    with caplog.at_level(logging.DEBUG):
        yield caplog
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()]
    assert not bad, [f"{r.name}: {r.getMessage()[:200]}" for r in bad]


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- limits -----------------------------------------------------------------------------------------


def test_rig_count_is_bounded_and_deleting_makes_room(store_server: LiveServer) -> None:
    """Forty PUTs against a store of four: four stored, the rest refused at once with 409 naming
    BEV_MAX_RIGS, nothing more written; a replacement of a stored rig still works; a DELETE makes room."""
    rigs_dir = Path(store_server.settings.rigs_dir)
    statuses = [put(store_server, f"r{i}", yaml.safe_dump(rig_data(f"r{i}"))).status_code for i in range(40)]
    assert statuses[:4] == [201] * 4 and statuses[4:] == [409] * 36, statuses
    check_error(put(store_server, "r99", yaml.safe_dump(rig_data("r99"))), 409, "limit", "BEV_MAX_RIGS", "DELETE")
    assert sorted(p.name for p in rigs_dir.glob("*.yaml")) == [f"r{i}.yaml" for i in range(4)]
    assert put(store_server, "r0", yaml.safe_dump(rig_data("r0", 0.25))).status_code == 200, (
        "a full store still takes replacements"
    )

    assert httpx.delete(store_server.url("/v1/rigs/r1")).status_code == 204
    assert not (rigs_dir / "r1.yaml").exists()
    check_error(httpx.get(store_server.url("/v1/rigs/r1")), 404, "unknown_rig")
    check_error(httpx.delete(store_server.url("/v1/rigs/r1")), 404, "unknown_rig")
    assert "r1" not in [r["id"] for r in httpx.get(store_server.url("/v1/rigs")).json()["rigs"]]
    assert put(store_server, "r5", yaml.safe_dump(rig_data("r5"))).status_code == 201
    for rig_id in ("r0", "r2", "r3", "r5"):
        assert httpx.delete(store_server.url(f"/v1/rigs/{rig_id}")).status_code == 204


def test_a_huge_rig_is_refused_before_its_tables_are_built(store_server: LiveServer) -> None:
    """A 2048 x 2048 grid of four cameras (16.7 M cells times cameras: ~500 MB of tables, 25 s to build)
    is refused at once naming BEV_MAX_RIG_CELLS; the process's memory does not grow."""
    data = rig_data("huge", cell_size_m=20.48 / 2048)
    data["grid"]["x_range_m"] = data["grid"]["y_range_m"] = [-10.24, 10.24]
    before = max_rss_mb()
    began = time.perf_counter()
    reply = put(store_server, "huge", yaml.safe_dump(data))
    seconds = time.perf_counter() - began
    check_error(reply, 422, "limit", "BEV_MAX_RIG_CELLS", "2048 x 2048")
    assert seconds < 5, f"refused after {seconds:.1f} s: were the tables built?"
    assert max_rss_mb() - before < 100, "the refused rig's tables were built"
    assert not (Path(store_server.settings.rigs_dir) / "huge.yaml").exists()


def test_total_cells_over_the_stored_rigs_are_bounded(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(max_total_cells=2 * 40 * 40 * 4)  # two rigs of the 0.5 m grid
    assert put(live, "a", yaml.safe_dump(rig_data("a"))).status_code == 201
    assert put(live, "b", yaml.safe_dump(rig_data("b"))).status_code == 201
    check_error(put(live, "c", yaml.safe_dump(rig_data("c"))), 409, "limit", "BEV_MAX_TOTAL_CELLS")


def test_cameras_per_rig_are_capped(store_server: LiveServer) -> None:
    """200 cameras: over the rig file's own ceiling (the int8 owner index is wide enough for it); 17:
    over the service's BEV_MAX_CAMERAS. Both refused, nothing stored."""
    check_error(put(store_server, "many", yaml.safe_dump(rig_data("many", 2.0, cameras=200))), 422, "bad_rig", "cameras", "64")
    check_error(put(store_server, "many", yaml.safe_dump(rig_data("many", 2.0, cameras=17))), 422, "limit", "BEV_MAX_CAMERAS")
    assert put(store_server, "many", yaml.safe_dump(rig_data("many", 2.0, cameras=16))).status_code == 201
    assert httpx.delete(store_server.url("/v1/rigs/many")).status_code == 204


def test_too_many_cameras_in_a_frame_set_is_refused_like_the_rig(store_server: LiveServer, image_files: Files) -> None:
    """REST takes as many files as a rig may have cameras (BEV_MAX_CAMERAS), no more."""
    part = next(iter(image_files.values()))
    files = {f"cam{i}": part for i in range(store_server.settings.max_cameras + 1)}
    reply = httpx.post(store_server.url("/v1/bev"), files=files, timeout=60)
    check_error(reply, 400, "bad_request", "Too many files")


# -- the served rig file is read-only -----------------------------------------------------------------


def test_the_served_rig_file_is_read_only(store_server: LiveServer) -> None:
    rigs_dir = Path(store_server.settings.rigs_dir)
    before = httpx.get(store_server.url("/v1/rigs/default")).json()["fingerprint"]
    changed = rig_data("default", 0.1)
    check_error(put(store_server, "default", yaml.safe_dump(changed)), 409, "read_only", "BEV_DEFAULT_RIG_ID")
    check_error(httpx.delete(store_server.url("/v1/rigs/default")), 409, "read_only")
    assert not (rigs_dir / "default.yaml").exists()
    assert httpx.get(store_server.url("/v1/rigs/default")).json()["fingerprint"] == before


def test_a_stored_rig_served_as_the_default_cannot_be_deleted(
    make_server: Callable[..., LiveServer], settings_for: Callable[..., Any]
) -> None:
    rigs_dir = settings_for().rigs_dir
    save_rig(rig_from_yaml(yaml.safe_dump(rig_data("yard"))), rigs_dir / "yard.yaml")
    # A stored file of the served rig file's id is ignored at start, never served in its place.
    save_rig(rig_from_yaml(yaml.safe_dump(rig_data("default", 0.25))), rigs_dir / "default.yaml")
    live = make_server(rigs_dir=rigs_dir, default_rig_id="yard")
    listing = httpx.get(live.url("/v1/rigs")).json()
    assert listing["default"] == "yard"
    assert httpx.get(live.url("/v1/rigs/default")).json()["grid"]["rows"] == 400, "the stored default.yaml was ignored"
    check_error(httpx.delete(live.url("/v1/rigs/yard")), 409, "read_only", "default")
    assert put(live, "yard", yaml.safe_dump(rig_data("yard", 0.25))).status_code == 200


# -- rig bodies -----------------------------------------------------------------------------------------

MIB = 1 << 20


def changed(path: tuple[Any, ...], value: Any) -> bytes:
    """The coarse default rig (id "hostile") with one value changed, as YAML."""
    data = rig_data("hostile")
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return yaml.safe_dump(data).encode()


def hostile_bodies() -> dict[str, tuple[bytes, int, str, str]]:
    """name: (body, status, kind, a word of the detail)."""
    flow = b"rig_id: hostile\ngrid: [" + b"0," * (MIB // 2 - 16) + b"0]\n"
    aliases = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        aliases.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 9) + "]")
    pose = ("cameras", 0, "vehicle_from_camera", "translation_m")
    return {
        "over-1-MiB": (yaml.safe_dump(rig_data("hostile")).encode() + b"#" * MIB, 413, "too_large", "BEV_MAX_RIG_BYTES"),
        "deep-flow-5000": (b"rig_id: " + b"[" * 5000 + b"]" * 5000, 422, "bad_rig", "nest"),
        "deep-block-1000": ("".join(" " * i + f"k{i}:\n" for i in range(1000)).encode(), 422, "bad_rig", "levels deep"),
        "deep-json-100000": (b"[" * 100_000 + b"]" * 100_000, 422, "bad_rig", "nest"),
        "flow-list-1-MiB": (flow, 422, "bad_rig", "values"),
        "alias-bomb": ("\n".join(aliases).encode(), 422, "bad_rig", "aliases"),
        "grid-1e308": (changed(("grid", "x_range_m"), [-1e308, 1e308]), 422, "bad_rig", "grid.x_range_m"),
        "grid-1e308-as-text": (changed(("grid", "x_range_m"), ["-1e308", "1e308"]), 422, "bad_rig", "grid.x_range_m"),
        "grid-inf": (changed(("grid", "x_range_m"), [float("-inf"), float("inf")]), 422, "bad_rig", "grid.x_range_m"),
        "cell-1e-300": (changed(("grid", "cell_size_m"), 1e-300), 422, "bad_rig", "grid.cell_size_m"),
        "position-1e300": (changed(pose, [1e300, 0.0, 1.0]), 422, "bad_rig", "vehicle_from_camera.translation_m"),
        "image-side-1e9": (changed(("cameras", 0, "image_size_hw"), [640, 10**9]), 422, "bad_rig", "image_size_hw"),
        "focal-1e300": (changed(("cameras", 0, "model", "fx"), 1e300), 422, "bad_rig", "model.fx"),
        "integer-of-5000-digits": (
            changed(("cameras", 0, "image_size_hw"), [640, 123456789]).replace(b"123456789", b"1" + b"0" * 5000),
            422,
            "bad_rig",
            "",
        ),
    }


@pytest.mark.parametrize("case", sorted(hostile_bodies()))
def test_hostile_rig_body_is_a_fast_4xx_without_a_traceback(case: str, store_server: LiveServer, no_tracebacks: Any) -> None:
    body, status, kind, word = hostile_bodies()[case]
    headers = {"content-type": "application/json" if "json" in case else "application/yaml"}
    began = time.perf_counter()
    reply = put(store_server, "hostile", body, headers)
    seconds = time.perf_counter() - began
    check_error(reply, status, kind, word)
    assert seconds < 1.0, f"{case}: answered in {seconds:.2f} s"
    assert not (Path(store_server.settings.rigs_dir) / "hostile.yaml").exists()
    assert httpx.get(store_server.url("/healthz")).status_code == 200


def test_a_rig_written_with_yaml_aliases_is_accepted(store_server: LiveServer) -> None:
    """yaml.safe_dump writes a camera given twice as an anchor and an alias: a well-meant rig file
    holding aliases is read (here it is refused only for the camera named twice)."""
    data = rig_data("aliased")
    data["cameras"].append(data["cameras"][0])
    text = yaml.safe_dump(data)
    assert "&id" in text and "*id" in text
    check_error(put(store_server, "aliased", text), 422, "bad_rig", "'front'", "twice")


# -- start-up ---------------------------------------------------------------------------------------------


def test_stored_rigs_are_not_built_at_start_up(tmp_path: Path, tiny_weights: Path) -> None:
    """Only the default rig's tables are built before the store exists; the stored rigs are built on
    first use (or by ``build_all`` in the background), once."""
    for i in range(3):
        save_rig(rig_from_yaml(yaml.safe_dump(rig_data(f"s{i}"))), tmp_path / f"s{i}.yaml")
    segmenter = load_segmenter(tiny_weights, backend="torch", device="cpu")
    built: list[str] = []

    def make_pipeline(rig: Rig) -> BevPipeline:
        built.append(rig.rig_id)
        return BevPipeline(rig, segmenter)

    store = RigStore(
        make_pipeline, tmp_path, DEFAULT_RIG, limits=RigLimits(), input_sizes=lambda rig: input_sizes(rig, segmenter)
    )
    assert built == ["default"] and store.ids() == ["default", "s0", "s1", "s2"]
    assert store.get("s1").input_sizes_hw == input_sizes(store.get("s1").rig, segmenter) == (segmenter.input_size_hw,) * 4
    assert not store.get("s1").built
    store.get("s1").pipeline  # noqa: B018
    store.get("s1").pipeline  # noqa: B018
    assert built == ["default", "s1"]
    store.build_all()
    assert sorted(built) == ["default", "s0", "s1", "s2"]
    store.close()


def test_masks_are_bounded_before_they_are_drawn(store_server: LiveServer) -> None:
    """A triangle of polygon on a 16384 x 16384 camera asks for 268 MB of mask: refused from the file's
    schema, fast, naming the limit; so is one camera's mask over the pixels an image may have, which a
    stored rig could not read back."""
    data = rig_data("masked", 2.0)
    data["cameras"][0]["image_size_hw"] = [16384, 16384]
    data["cameras"][0]["mask"] = {"masked_polygons": [[[0, 0], [10, 0], [0, 10]]]}
    began = time.perf_counter()
    check_error(put(store_server, "masked", yaml.safe_dump(data)), 422, "limit", "BEV_MAX_MASK_PIXELS")
    assert time.perf_counter() - began < 1.0
    data["cameras"][0]["image_size_hw"] = [4000, 5000]  # 20 M pixels: within the rig's total, over one image's
    check_error(put(store_server, "masked", yaml.safe_dump(data)), 422, "bad_rig", "mask", "16777216")
    assert not (Path(store_server.settings.rigs_dir) / "masked.yaml").exists()


def test_a_served_rig_over_the_camera_limit_says_so_at_start(settings_for: Callable[..., Any], tmp_path: Path) -> None:
    """A served rig file with more cameras than a request may carry could never be used: not ready, saying why."""
    rig_file = tmp_path / "wide.yaml"
    rig_file.write_text(yaml.safe_dump(rig_data("wide", 2.0, cameras=6)))
    with running_server(settings_for(rig=rig_file, max_cameras=4), ready=False) as live:
        deadline = time.monotonic() + 60
        while (reply := httpx.get(live.url("/readyz"))).json().get("detail") == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert reply.status_code == 503 and "BEV_MAX_CAMERAS" in reply.json()["detail"], reply.text
