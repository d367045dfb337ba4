"""Two real services (uvicorn on loopback) sharing one rigs_dir with BEV_SHARED_RIGS_DIR, as replicas do: a
rig PUT, replaced or deleted on one is listed, served and answered by the other; max_rigs holds across
the two, also for PUTs racing on both; a bad file dropped into the folder is skipped, logged once; and
without shared mode a service does not see the other's PUT."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from bev_service.service.rigs import RigStore
from tests.service.conftest import Files, LiveServer
from tests.service.test_rig_store_limits import check_error, put, rig_data
from tests.service.test_rigs import with_front_pitch

MAX_RIGS = 3
Pair = tuple[LiveServer, LiveServer]


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared-rigs")


@pytest.fixture(scope="module")
def pair(make_server: Callable[..., LiveServer], shared_dir: Path) -> Pair:
    """Services a and b on one rigs_dir, both shared, each keeping at most MAX_RIGS stored rigs."""
    a, b = (make_server(rigs_dir=shared_dir, shared_rigs_dir=True, max_rigs=MAX_RIGS) for _ in range(2))
    return a, b


@pytest.fixture(scope="module")
def grey_files() -> Files:
    """One grey JPEG per camera of the default rig, at half its image size (the tables scale)."""
    out = io.BytesIO()
    Image.new("RGB", (480, 320), (90, 90, 90)).save(out, "JPEG")
    return {c["name"]: (f"{c['name']}.jpg", out.getvalue(), "image/jpeg") for c in rig_data("any")["cameras"]}


def rig_text(rig_id: str, cell_size_m: float = 0.5) -> str:
    return yaml.safe_dump(rig_data(rig_id, cell_size_m))


def listed(live: LiveServer) -> list[str]:
    reply = httpx.get(live.url("/v1/rigs"))
    assert reply.status_code == 200, reply.text
    return [r["id"] for r in reply.json()["rigs"]]


def store_of(live: LiveServer) -> RigStore:
    store = live.app.state.bev.store
    assert isinstance(store, RigStore)
    return store


def stored_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.yaml"))


def test_a_rig_put_on_one_service_is_served_replaced_and_deleted_on_the_other(pair: Pair, grey_files: Files) -> None:
    a, b = pair
    first = put(a, "yard", rig_text("yard"))
    assert first.status_code == 201, first.text
    assert "yard" in listed(b)
    assert httpx.get(b.url("/v1/rigs/yard")).json()["fingerprint"] == first.json()["fingerprint"]
    own = store_of(a).get("yard")
    assert listed(a) and store_of(a).get("yard") is own and own.built, "a keeps the entry it built, not a re-read"
    assert not store_of(b).get("yard").built, "b builds a rig stored elsewhere on its first use"
    bev = httpx.post(b.url("/v1/bev"), files=grey_files, params={"rig": "yard"}, timeout=60)
    assert bev.status_code == 200 and bev.headers["x-bev-rig"] == "yard", bev.text
    assert bev.json()["rig_fingerprint"] == first.json()["fingerprint"] and bev.json()["grid"]["rows"] == 40

    tilted = put(a, "yard", yaml.safe_dump(with_front_pitch(rig_data("yard"), 40.0)))
    assert tilted.status_code == 200 and tilted.json()["fingerprint"] != first.json()["fingerprint"], tilted.text
    assert httpx.get(b.url("/v1/rigs/yard")).json()["fingerprint"] == tilted.json()["fingerprint"]
    bev = httpx.post(b.url("/v1/bev"), files=grey_files, params={"rig": "yard"}, timeout=60)
    assert bev.status_code == 200 and bev.json()["rig_fingerprint"] == tilted.json()["fingerprint"], bev.text

    assert httpx.delete(a.url("/v1/rigs/yard")).status_code == 204
    assert httpx.get(b.url("/v1/rigs/yard")).status_code == 404
    assert httpx.post(b.url("/v1/bev"), files=grey_files, params={"rig": "yard"}, timeout=60).status_code == 404
    assert httpx.delete(b.url("/v1/rigs/yard")).status_code == 404, "already deleted by a"
    assert "yard" not in listed(b) and "yard.yaml" not in stored_files(b.settings.rigs_dir)


def test_max_rigs_holds_across_the_services(pair: Pair) -> None:
    """Filled to the limit on a, a new id is refused on b; b may still replace a rig a stored, and a
    DELETE on b makes room on a."""
    a, b = pair
    ids = [f"full{i}" for i in range(MAX_RIGS)]
    for rig_id in ids:
        assert put(a, rig_id, rig_text(rig_id)).status_code == 201
    check_error(put(b, "extra", rig_text("extra")), 409, "limit", "BEV_MAX_RIGS")
    assert put(b, "full0", rig_text("full0", 1.0)).status_code == 200
    assert httpx.get(a.url("/v1/rigs/full0")).json()["grid"]["rows"] == 20
    check_error(put(a, "extra", rig_text("extra")), 409, "limit", "BEV_MAX_RIGS")
    assert httpx.delete(b.url("/v1/rigs/full1")).status_code == 204
    assert put(a, "extra", rig_text("extra")).status_code == 201
    assert stored_files(a.settings.rigs_dir) == ["extra.yaml", "full0.yaml", "full2.yaml"]
    for rig_id in ("extra", "full0", "full2"):
        assert httpx.delete(b.url(f"/v1/rigs/{rig_id}")).status_code == 204


def test_puts_racing_on_both_services_do_not_pass_max_rigs(pair: Pair) -> None:
    """Three new ids on each service at once, six in all: exactly MAX_RIGS are stored, the rest refused,
    and both services list the same ones."""
    start = threading.Barrier(2 * MAX_RIGS)
    statuses: dict[str, int] = {}

    def put_one(live: LiveServer, rig_id: str) -> None:
        text = rig_text(rig_id)
        start.wait(timeout=30)
        statuses[rig_id] = put(live, rig_id, text).status_code

    jobs = [(live, f"race-{i}-{n}") for i, live in enumerate(pair) for n in range(MAX_RIGS)]
    threads = [threading.Thread(target=put_one, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses.values()) == [201] * MAX_RIGS + [409] * MAX_RIGS, statuses
    won = sorted(k for k, v in statuses.items() if v == 201)
    a, b = pair
    assert stored_files(a.settings.rigs_dir) == [f"{k}.yaml" for k in won]
    assert [k for k in listed(a) if k != "default"] == won == [k for k in listed(b) if k != "default"]
    for rig_id in won:
        assert httpx.delete(a.url(f"/v1/rigs/{rig_id}")).status_code == 204


def test_a_bad_file_in_the_folder_is_skipped_and_logged_once(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """A file that is not YAML and one whose rig_id is not its name: skipped by both services, each saying
    so once per version of the file however often it looks; the rest keeps working; fixed, it is served."""
    a, b = pair
    folder = b.settings.rigs_dir
    (folder / "broken.yaml").write_text("rig_id: [broken\n")
    (folder / "misnamed.yaml").write_text(rig_text("other"))
    with caplog.at_level(logging.ERROR, logger="bev_service.service.rigs"):
        for _ in range(3):
            assert set(listed(b)).isdisjoint({"broken", "misnamed", "other"})
        assert httpx.get(b.url("/v1/rigs/broken")).status_code == 404
        assert put(a, "fine", rig_text("fine")).status_code == 201
        assert "fine" in listed(b) and httpx.get(b.url("/v1/rigs/fine")).status_code == 200
    for name in ("broken.yaml", "misnamed.yaml"):
        skips = [r for r in caplog.records if "skipping stored rig" in r.getMessage() and name in r.getMessage()]
        assert len(skips) == 2, [r.getMessage() for r in skips]

    (folder / "broken.yaml").write_text(rig_text("broken"))  # the same file fixed in place
    assert "broken" in listed(b) and httpx.get(a.url("/v1/rigs/broken")).status_code == 200
    (folder / "misnamed.yaml").unlink()
    for rig_id in ("broken", "fine"):
        assert httpx.delete(b.url(f"/v1/rigs/{rig_id}")).status_code == 204


def test_without_shared_mode_a_service_does_not_see_the_others_put(
    make_server: Callable[..., LiveServer], pair: Pair, shared_dir: Path
) -> None:
    """The difference shared mode makes: a service that owns the folder alone reads it at start only."""
    a, _ = pair
    alone = make_server(rigs_dir=shared_dir)
    assert put(a, "late", rig_text("late")).status_code == 201
    assert "late" not in listed(alone) and httpx.get(alone.url("/v1/rigs/late")).status_code == 404
    assert httpx.delete(a.url("/v1/rigs/late")).status_code == 204
