"""bev_service.client and ``bev demo`` against a real uvicorn on a loopback port serving ``create_app``
with a tiny untrained network on the default rig, behind a bearer token."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest

from bev_service.calib.rigfile import load_rig
from bev_service.classes import CLASSES
from bev_service.cli.demo import DemoStats, render_drive, stream_drive
from bev_service.cli.main import main
from bev_service.client import BevClient, ServiceError, StreamClient, StreamReply, decode_grid_png, stream_url
from bev_service.runtime.weights import save_model
from bev_service.service.settings import Settings
from tests.conftest import DEFAULT_RIG
from tests.live_server import free_socket, running_server
from tests.networks import TINY, tiny_model

TOKEN = "client-test-token"
CAMERAS = ("front", "left", "rear", "right")
GRID_HW = (400, 400)  # the default rig's 20 m x 20 m at 5 cm


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``create_app`` under uvicorn in a thread; yields the base URL once ``/readyz`` says ready."""
    tmp = tmp_path_factory.mktemp("client")
    weights = tmp / "tiny.pt"
    save_model(weights, tiny_model(), TINY, {"note": "untrained, for the client tests"})
    fields: dict[str, Any] = {
        "model": weights,
        "backend": "torch",
        "device": "cpu",
        "rig": DEFAULT_RIG,
        "rigs_dir": tmp / "rigs",
        "api_token": TOKEN,
    }
    settings = Settings(**fields, log_level="warning")
    # The token guards /v1 only; /readyz stays open, so the shared server helper can wait on it.
    with running_server(settings, ready_timeout_s=120) as live:
        with BevClient(live.base_url, TOKEN) as client:
            assert client.wait_ready(5), "the token-guarded routes answer once /readyz does"
        yield live.base_url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[BevClient]:
    with BevClient(server, TOKEN, timeout_s=60) as client:
        yield client


def jpeg_frames(seed: int = 0, size_hw: tuple[int, int] = (160, 240)) -> dict[str, bytes]:
    """Smooth random images at a quarter of the rig's 640 x 960 (a whole factor, which the service accepts)."""
    rng = np.random.default_rng(seed)
    h, w = size_hw
    frames = {}
    for name in CAMERAS:
        image = cv2.resize(rng.integers(0, 256, size=(h // 8, w // 8, 3), dtype=np.uint8), (w, h))
        frames[name] = cv2.imencode(".jpg", image)[1].tobytes()
    return frames


# -- REST -----------------------------------------------------------------------------------------


def test_json_png_and_raw_replies_hold_the_same_grid(client: BevClient) -> None:
    frames = jpeg_frames()
    reply = client.bev(frames)
    png = client.bev(frames, format="png")
    raw = client.bev(frames, format="raw")
    assert reply["rig"] == raw.rig == "default"
    assert (reply["grid"]["rows"], reply["grid"]["cols"]) == GRID_HW == raw.cells.shape
    from_json = decode_grid_png(base64.b64decode(reply["grid"]["png_base64"]))
    np.testing.assert_array_equal(from_json, raw.cells)
    np.testing.assert_array_equal(decode_grid_png(png), raw.cells)
    values = set(np.unique(raw.cells).tolist())
    assert 254 in values and values - {254, 255} <= set(range(len(CLASSES)))  # ego footprint, class ids, unseen
    assert reply["timing_ms"]["total"] > 0


def test_a_missing_camera_raises_service_error_naming_it(client: BevClient) -> None:
    frames = jpeg_frames()
    del frames["rear"]
    with pytest.raises(ServiceError) as caught:
        client.bev(frames)
    assert caught.value.status == 422 and caught.value.error == "bad_frame"
    assert "'rear'" in caught.value.detail and str(caught.value).startswith("422 bad_frame: ")


def test_an_unknown_rig_is_404(client: BevClient) -> None:
    with pytest.raises(ServiceError) as caught:
        client.bev(jpeg_frames(), rig="no-such-rig")
    assert (caught.value.status, caught.value.error) == (404, "unknown_rig")


def test_no_token_is_refused_with_401(server: str) -> None:
    with BevClient(server) as anonymous, pytest.raises(ServiceError) as caught:
        anonymous.classes()
    assert (caught.value.status, caught.value.error) == (401, "unauthorized")


def test_metadata_routes(client: BevClient) -> None:
    assert client.ready()
    rigs = client.rigs()
    assert rigs["default"] == "default" and "default" in [r["id"] for r in rigs["rigs"]]
    rig = client.rig("default")
    assert [c["name"] for c in rig["cameras"]] == list(CAMERAS)
    assert {c.name for c in CLASSES} <= {c["name"] for c in client.classes()}
    assert client.model()["backend"]
    assert "# TYPE" in client.metrics()
    assert client.coverage_png("default").startswith(b"\x89PNG")


def test_a_rig_put_then_used_by_id(client: BevClient) -> None:
    text = DEFAULT_RIG.read_text().replace("rig_id: default", "rig_id: copy")
    stored = client.put_rig("copy", text)
    assert stored["id"] == "copy" and stored["fingerprint"] == client.rig("default")["fingerprint"]
    assert client.bev(jpeg_frames(), rig="copy", format="raw").rig == "copy"


# -- the stream -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/v1/stream"),
        ("https://bev.example:443/", "wss://bev.example:443/v1/stream"),
        ("ws://h:1/v1/stream?token=t", "ws://h:1/v1/stream?token=t"),
    ],
)
def test_stream_url(url: str, expected: str) -> None:
    assert stream_url(url) == expected


def test_stream_url_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="http"):
        stream_url("ftp://h/")


def test_stream_replies_in_order_with_their_seq(server: str, client: BevClient) -> None:
    """Three frame sets sent at once: the replies come in order of seq, the last one always among
    them (latest wins), and every other one answered or counted as dropped."""
    frames = jpeg_frames(seed=1)

    async def session() -> list[StreamReply]:
        async with StreamClient(server, TOKEN, timeout_s=60) as stream:
            for seq in (10, 11, 12):
                await stream.send(seq, frames, stamp=100.0 + seq)
            replies = [await stream.recv()]
            while replies[-1].seq != 12:
                replies.append(await stream.recv())
            return replies

    replies = asyncio.run(session())
    seqs = [r.seq for r in replies]
    assert seqs == sorted(seqs) and seqs[-1] == 12 and all(r.ok for r in replies)
    assert len(replies) + replies[-1].dropped == 3
    assert [r.stamp for r in replies] == [100.0 + s for s in seqs]
    np.testing.assert_array_equal(replies[-1].cells(), client.bev(frames, format="raw").cells)


def test_a_bad_frame_set_gets_an_error_reply_and_the_stream_goes_on(server: str) -> None:
    frames = jpeg_frames(seed=2)

    async def session() -> tuple[StreamReply, StreamReply]:
        async with StreamClient(server, TOKEN, timeout_s=60) as stream:
            await stream.send(1, {k: v for k, v in frames.items() if k != "left"})
            bad = await stream.recv()
            await stream.send(2, frames)
            return bad, await stream.recv()

    bad, good = asyncio.run(session())
    assert (bad.seq, bad.ok) == (1, False) and "'left'" in (bad.error or "")
    assert (good.seq, good.ok, good.rig) == (2, True, "default") and good.cells().shape == GRID_HW
    with pytest.raises(ServiceError, match="no grid"):
        bad.cells()


def test_a_stream_without_the_token_is_closed_with_1008(server: str) -> None:
    async def session() -> None:
        async with StreamClient(server, timeout_s=30) as stream:
            await stream.send(1, jpeg_frames())
            await stream.recv()

    with pytest.raises(ServiceError) as caught:
        asyncio.run(session())
    assert caught.value.status == 1008 and "token" in caught.value.detail


# -- bev demo -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drive() -> list[dict[str, bytes]]:
    return render_drive(load_rig(DEFAULT_RIG), frames=2, seed=0, scale=0.25)


def test_render_drive_gives_jpegs_per_camera(drive: list[dict[str, bytes]]) -> None:
    assert len(drive) == 2 and all(tuple(frames) == CAMERAS for frames in drive)
    image = cv2.imdecode(np.frombuffer(drive[0]["front"], np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (160, 240, 3)
    assert drive[0]["front"] != drive[1]["front"]  # the car moved


def test_sending_faster_than_the_service_counts_drops(server: str, drive: list[dict[str, bytes]]) -> None:
    """Twelve frame sets in about 12 ms: the service computes a few and drops the rest; the count
    settles exactly and the last frame set is answered."""

    async def session() -> DemoStats:
        async with StreamClient(server, TOKEN, timeout_s=60) as stream:
            return await stream_drive(stream, drive, count=12, fps=1000, timeout_s=60, progress_s=None)

    stats = asyncio.run(session())
    assert (stats.sent, stats.errors) == (12, 0)
    assert stats.received + stats.dropped == 12 and stats.dropped > 0
    assert len(stats.latencies_ms) == stats.received and stats.fps > 0


def test_bev_demo_streams_a_drive(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--url", server, "--token", TOKEN, "--frames", "6", "--fps", "0", "--drive-frames", "2", "--scale", "0.25"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["demo"] == "stream" and summary["sent"] == 6 and summary["errors"] == 0
    assert summary["received"] + summary["dropped"] == 6 and summary["received"] >= 3
    assert summary["fps"] > 0 and summary["median_latency_ms"] > 0
    assert any(line.startswith("demo: service ready") for line in lines)


def test_bev_demo_with_a_wrong_token_exits_1(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--url", server, "--token", "wrong", "--frames", "2", "--drive-frames", "1", "--scale", "0.25"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert (summary["received"], summary["errors"]) == (0, 1) and "1008" in captured.err


def test_bev_demo_without_a_service_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with free_socket() as sock:  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        assert main(["demo", "--url", url, "--wait", "0.5", "--frames", "1", "--scale", "0.1"]) == 1
    captured = capsys.readouterr()
    assert "not ready within 0.5 s" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["errors"] == 1


def test_bev_demo_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--frames", "0"]) == 2
    assert "--frames must be at least 1" in capsys.readouterr().err
