"""The error matrix against a real uvicorn: every bad request gets its status and a JSON body naming
the problem, every bad stream message its error reply or close code with a reason, while a
well-formed client posting frame sets the whole time is never disturbed. Then the bearer token on
every /v1 route and the stream, and overload answered with 503 and Retry-After."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import msgpack
import numpy as np
import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bev_service.synth import RenderedFrameSet
from tests.service.conftest import Files, LiveServer, as_files, overload_rejections

MIB = 1 << 20
BODY_LIMIT = MIB  # the frame sets here are ~190 KB
TOKEN = "error-matrix-token"


@pytest.fixture(scope="module")
def limited(make_server: Callable[..., LiveServer]) -> LiveServer:
    """A server with a 1 MiB limit on request bodies and stream messages."""
    return make_server(max_body_bytes=BODY_LIMIT, ws_max_message_bytes=BODY_LIMIT)


# -- the well-formed client beside every bad one ----------------------------------------------------


@dataclass
class GoodClient:
    """Posts the good frame set in a loop from its own thread; records every outcome."""

    base_url: str
    files: Files
    outcomes: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self.stop.is_set():
                try:
                    reply = client.post("/v1/bev", files=self.files, params={"format": "raw"})
                except httpx.HTTPError as exc:
                    self.outcomes.append(f"transport error {exc!r}")
                    continue
                ok = reply.status_code == 200 and len(reply.content) == 400 * 400
                self.outcomes.append("ok" if ok else f"{reply.status_code} {reply.text[:200]}")

    def wait_for(self, count: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.outcomes) < count:
            assert time.monotonic() < deadline, f"the good client finished only {len(self.outcomes)} requests"
            time.sleep(0.01)


@contextmanager
def good_client_beside(live: LiveServer, files: Files) -> Iterator[GoodClient]:
    """A good client running before, during and after the block; all its requests must succeed."""
    good = GoodClient(live.base_url, files)
    thread = threading.Thread(target=good.run, name="good-client")
    thread.start()
    try:
        good.wait_for(1)
        yield good
        good.wait_for(len(good.outcomes) + 1)  # one more, started after the bad input was answered
    finally:
        good.stop.set()
        thread.join(timeout=60)
    assert good.outcomes and all(o == "ok" for o in good.outcomes), [o for o in good.outcomes if o != "ok"][:3]


# -- bad inputs -----------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header declares width x height grey pixels (and a stub of data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png_bomb(side: int) -> bytes:
    """A whole, valid PNG of side x side black grey pixels: tens of KB that decode to side² bytes."""
    row = b"\0" * (side + 1)  # filter byte + pixels
    data = zlib.compressobj(9)
    idat = b"".join(data.compress(row) for _ in range(side)) + data.flush()
    head = png_header_only(side, side)
    ihdr_end = 8 + 25
    return (
        head[:ihdr_end]
        + struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
        + head[-12:]
    )


def jpeg_of_size(image: np.ndarray, width: int, height: int) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.resize(image, (width, height)))
    assert ok
    return data.tobytes()


@dataclass(frozen=True)
class BadForm:
    """A multipart frame set with some camera parts replaced, dropped or added."""

    replace: dict[str, bytes] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    data: dict[str, str] = field(default_factory=dict)
    status: int = 422
    kind: str = "bad_frame"
    words: tuple[str, ...] = ()

    def files(self, frame_set: RenderedFrameSet) -> Files:
        parts = {**{n: d for n, d in frame_set.jpeg.items() if n not in self.drop}, **self.replace}
        return as_files(parts)


def bad_forms(frame_set: RenderedFrameSet) -> dict[str, BadForm]:
    front = frame_set.jpeg["front"]
    image = frame_set.images["front"]
    return {
        "truncated-jpeg": BadForm({"front": front[: len(front) // 2]}, words=("front", "truncated")),
        "not-an-image": BadForm({"left": b"GIF? no: plain text"}, words=("left", "cannot decode")),
        "empty-file": BadForm({"rear": b""}, words=("rear", "empty")),
        "not-a-whole-factor": BadForm({"front": jpeg_of_size(image, 500, 300)}, words=("front", "500x300", "whole factor")),
        "other-aspect-ratio": BadForm({"front": jpeg_of_size(image, 480, 240)}, words=("front", "480x240")),
        "larger-than-calibrated": BadForm({"right": jpeg_of_size(image, 1920, 1280)}, words=("right", "1920x1280")),
        "missing-camera": BadForm(drop=("rear",), words=("missing 'rear'", "expected 4 cameras")),
        "extra-camera": BadForm({"roof": front}, words=("unknown 'roof'",)),
        "unknown-rig": BadForm(data={"rig": "no-such-rig"}, status=404, kind="unknown_rig", words=("no-such-rig", "default")),
        "bomb-header-20000x20000": BadForm({"front": png_header_only(20000, 20000)}, words=("front", "pixels")),
        "bomb-header-10000x10000": BadForm({"front": png_header_only(10000, 10000)}, words=("front", "pixels")),
        "bomb-8000x8000": BadForm({"front": png_bomb(8000)}, words=("front", "8000x8000", "pixels")),
        "label-bomb": BadForm({"front": png_header_only(20000, 20000)}, data={"labels": "true"}, words=("front", "pixels")),
    }


CASES: list[Any] = [
    "truncated-jpeg",
    "not-an-image",
    "empty-file",
    "not-a-whole-factor",
    "other-aspect-ratio",
    "larger-than-calibrated",
    "missing-camera",
    "extra-camera",
    "unknown-rig",
    "bomb-header-20000x20000",
    "bomb-header-10000x10000",
    "bomb-8000x8000",
    "label-bomb",
]


def check_error(reply: httpx.Response, status: int, kind: str, *words: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error", "detail"} and body["error"] == kind, body
    for word in words:
        assert word in body["detail"], f"{word!r} not in {body['detail']!r}"


@pytest.fixture(scope="module")
def forms(frame_set: RenderedFrameSet) -> dict[str, BadForm]:
    return bad_forms(frame_set)


@pytest.mark.parametrize("case", CASES)
def test_bad_frame_set(
    case: str, forms: dict[str, BadForm], limited: LiveServer, frame_set: RenderedFrameSet, image_files: Files
) -> None:
    bad = forms[case]
    assert sorted(forms) == sorted(c if isinstance(c, str) else c.values[0] for c in CASES)
    with good_client_beside(limited, image_files):
        began = time.perf_counter()
        reply = httpx.post(limited.url("/v1/bev"), files=bad.files(frame_set), data=bad.data, timeout=60)
        elapsed = time.perf_counter() - began
    check_error(reply, bad.status, bad.kind, *bad.words)
    if case.startswith("bomb"):
        assert elapsed < 5, f"a bomb is refused from its header, not after decoding ({elapsed:.1f} s)"


def test_a_camera_twice_and_a_text_field(limited: LiveServer, frame_set: RenderedFrameSet, image_files: Files) -> None:
    with good_client_beside(limited, image_files):
        twice = [*as_files(frame_set.jpeg).items(), ("front", ("front.jpg", frame_set.jpeg["front"], "image/jpeg"))]
        check_error(httpx.post(limited.url("/v1/bev"), files=twice), 422, "bad_frame", "'front'", "twice")
        text = httpx.post(limited.url("/v1/bev"), files=image_files, data={"comment": "hello"})
        check_error(text, 422, "bad_frame", "'comment'", "not a file")


@pytest.mark.parametrize(
    ("content_type", "body", "status", "kind"),
    [
        ("multipart/form-data; boundary=xyz", b"", 422, "bad_frame"),
        ("multipart/form-data", b"", 400, "bad_request"),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Disposition: form-data; name=front", 422, "bad_frame"),
        ("application/json", b'{"front": "aGVsbG8="}', 415, "unsupported_media_type"),
        ("image/jpeg", b"\xff\xd8\xff\xd9", 415, "unsupported_media_type"),
        (None, b"", 415, "unsupported_media_type"),
    ],
    ids=["empty-multipart", "no-boundary", "cut-multipart", "json", "bare-jpeg", "no-content-type"],
)
def test_bad_body(content_type: str | None, body: bytes, status: int, kind: str, limited: LiveServer, image_files: Files) -> None:
    headers = {"content-type": content_type} if content_type else {}
    with good_client_beside(limited, image_files):
        reply = httpx.post(limited.url("/v1/bev"), content=body, headers=headers)
    check_error(reply, status, kind)


HEAD = b'--xyz\r\nContent-Disposition: form-data; name="front"; filename="front.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
TAIL = b"\r\n--xyz--\r\n"


def big_multipart(size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """A well-formed multipart body of about ``size`` bytes: one file part, in chunks."""
    yield HEAD
    for start in range(0, size, chunk):
        yield b"\xff" * min(chunk, size - start)
    yield TAIL


@pytest.mark.parametrize("how", ["content-length", "chunked"])
def test_oversized_body(how: str, limited: LiveServer, image_files: Files) -> None:
    """Refused by its declared length before reading, or while reading a chunked upload: never buffered whole."""
    size = BODY_LIMIT + BODY_LIMIT // 2
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    with good_client_beside(limited, image_files):
        if how == "content-length":
            reply = httpx.post(limited.url("/v1/bev"), content=b"".join(big_multipart(size)), headers=headers)
        else:
            reply = httpx.post(limited.url("/v1/bev"), content=big_multipart(size), headers=headers)
            assert reply.request.headers.get("transfer-encoding") == "chunked"
    check_error(reply, 413, "too_large", str(BODY_LIMIT))


@pytest.mark.parametrize("how", ["content-length", "chunked"])
def test_oversized_rig_put(how: str, limited: LiveServer, image_files: Files) -> None:
    comment = b"# " + b"padding " * (BODY_LIMIT // 8) + b"\n"
    body = comment + b"rig_id: big\n"
    with good_client_beside(limited, image_files):
        content = (
            body
            if how == "content-length"
            else iter([comment[: len(comment) // 2], comment[len(comment) // 2 :], b"rig_id: big\n"])
        )
        reply = httpx.put(limited.url("/v1/rigs/big"), content=content, headers={"content-type": "application/yaml"})
    check_error(reply, 413, "too_large")
    assert not (limited.settings.rigs_dir / "big.yaml").exists()


def test_oversized_frame_set_of_real_images(limited: LiveServer, frame_set: RenderedFrameSet, image_files: Files) -> None:
    """A well-formed multipart form over the limit (each camera's JPEG padded after its end marker)."""
    padded = {n: d + b"\0" * (BODY_LIMIT // 3) for n, d in frame_set.jpeg.items()}
    with good_client_beside(limited, image_files):
        reply = httpx.post(limited.url("/v1/bev"), files=as_files(padded))
    check_error(reply, 413, "too_large")


# -- bad stream messages ----------------------------------------------------------------------------


def frame_message(seq: int, images: dict[str, bytes], **extra: Any) -> bytes:
    return msgpack.packb({"seq": seq, "stamp": 1.0, "images": images, **extra}, use_bin_type=True)


def closed_with(ws: Any) -> tuple[int, str]:
    """(code, reason) of the close the server sends next."""
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=30)
    assert closed.value.rcvd is not None, "the server closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        (b"\xc1\xc1 not msgpack", 1007, "msgpack"),
        (msgpack.packb({"seq": 1}) + b"trailing bytes", 1007, "msgpack"),
        (b"\x81\x91\x01\x01", 1007, "msgpack"),  # a map keyed by an array: msgpack raises TypeError (unhashable), not ValueError
        ("a text frame", 1003, "binary"),
        (b"\x00" * (BODY_LIMIT + 1), 1009, ""),
    ],
    ids=["garbage", "trailing-garbage", "unhashable-key", "text", "oversized"],
)
def test_bad_stream_message_closes_with_a_reason(
    message: bytes | str, code: int, words: str, limited: LiveServer, image_files: Files
) -> None:
    with good_client_beside(limited, image_files), connect(limited.ws_url, max_size=None) as ws:
        ws.send(message)
        got_code, reason = closed_with(ws)
    assert got_code == code, (got_code, reason)
    assert reason, "a close says why"
    assert words.lower() in reason.lower(), reason


def test_malformed_frame_sets_get_error_replies_and_the_stream_goes_on(
    limited: LiveServer, frame_set: RenderedFrameSet, image_files: Files
) -> None:
    images = frame_set.jpeg
    truncated = {**images, "front": images["front"][:1000]}
    bad = [
        (msgpack.packb([1, 2, 3]), None, "map"),
        (msgpack.packb("hello"), None, "map"),
        (msgpack.packb({"seq": "one", "images": images}, use_bin_type=True), "one", "seq"),
        (msgpack.packb({"seq": 3}), 3, "images"),
        (msgpack.packb({"seq": 4, "images": {}}), 4, "images"),
        (msgpack.packb({"seq": 5, "images": {"front": "text, not bytes"}}), 5, "front"),
        (msgpack.packb({"seq": 6, "images": images, "stamp": "noon"}, use_bin_type=True), 6, "stamp"),
        (frame_message(7, images, rig=5), 7, "rig"),
        (frame_message(8, images, rig="no-such-rig"), 8, "no-such-rig"),
        (frame_message(9, truncated), 9, "truncated"),
        (frame_message(10, {k: v for k, v in images.items() if k != "left"}), 10, "missing 'left'"),
    ]
    with good_client_beside(limited, image_files), connect(limited.ws_url, max_size=None) as ws:
        for message, seq, words in bad:
            ws.send(message)
            reply = msgpack.unpackb(ws.recv(timeout=30), raw=False)
            assert reply["seq"] == seq and words in reply["error"], reply
            ws.send(frame_message(100, images))  # still usable
            good = msgpack.unpackb(ws.recv(timeout=30), raw=False)
            assert good["seq"] == 100 and "error" not in good and good["rows"] == 400, good.get("error")


# -- bearer token ---------------------------------------------------------------------------------


def concrete_path(path: str) -> str:
    return path.replace("{rig_id}", "default").replace("{index}", "99")


@pytest.fixture(scope="module")
def guarded(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(api_token=TOKEN)


def all_routes(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, into included routers (FastAPI keeps those as one entry holding the router)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from all_routes(inner.routes)
        else:
            yield route


def test_every_v1_route_needs_the_token(guarded: LiveServer, image_files: Files) -> None:
    routes = [
        (r.path, sorted(r.methods or ()))
        for r in all_routes(guarded.app.routes)
        if isinstance(r, APIRoute) and r.path.startswith("/v1")
    ]
    documented = {path for path in guarded.app.openapi()["paths"] if path.startswith("/v1")}
    assert {path for path, _ in routes} == documented, "the walk over app.routes found every documented /v1 route"
    assert {
        "/v1/bev",
        "/v1/rigs",
        "/v1/rigs/{rig_id}",
        "/v1/rigs/{rig_id}/coverage.png",
        "/v1/classes",
        "/v1/model",
    } <= documented
    rig_yaml = httpx.get(guarded.url("/v1/rigs/default"), headers={"Authorization": f"Bearer {TOKEN}"}).json()["yaml"]
    bodies: dict[str, dict[str, Any]] = {
        "POST": {"files": image_files},
        "PUT": {"content": rig_yaml, "headers": {"content-type": "application/yaml"}},
    }
    with httpx.Client(base_url=guarded.base_url, timeout=60) as client:
        for path, methods in routes:
            for method in methods:
                url = concrete_path(path)
                body = bodies.get(method, {})
                extra = dict(body.get("headers", {}))
                send = {k: v for k, v in body.items() if k != "headers"}
                for token in (None, "wrong-token", TOKEN[:-1]):
                    headers = {**extra, **({"Authorization": f"Bearer {token}"} if token else {})}
                    refused = client.request(method, url, headers=headers, **send)
                    check_error(refused, 401, "unauthorized", "token")
                    challenge = refused.headers.get("www-authenticate", "")
                    assert challenge.startswith('Bearer realm="bev-service"'), (method, url, challenge)
                    assert ('error="invalid_token"' in challenge) == (token is not None), challenge
                let_in = client.request(method, url, headers={**extra, "Authorization": f"Bearer {TOKEN}"}, **send)
                assert let_in.status_code != 401, (method, url)
                read_only = method in ("PUT", "DELETE") and let_in.status_code == 409  # the served rig file
                assert let_in.status_code < 400 or read_only or url.startswith("/v1/demo/frames/99"), (method, url, let_in.text)
        for open_path in ("/healthz", "/readyz", "/metrics", "/metrics/fleet"):
            assert client.get(open_path).status_code == 200, open_path


def test_the_stream_needs_the_token(guarded: LiveServer, frame_set: RenderedFrameSet) -> None:
    (route,) = [r for r in all_routes(guarded.app.routes) if isinstance(r, APIWebSocketRoute)]
    assert route.path == "/v1/stream"
    for url, headers in (
        (guarded.ws_url, {}),
        (guarded.ws_url + "?token=wrong", {}),
        (guarded.ws_url, {"Authorization": "Bearer x"}),
    ):
        with connect(url, additional_headers=headers, max_size=None) as ws:
            code, reason = closed_with(ws)  # closed at once, before any frame set is read
            assert code == 1008 and "token" in reason, (url, headers, code, reason)
    for url, headers in ((guarded.ws_url + f"?token={TOKEN}", {}), (guarded.ws_url, {"Authorization": f"Bearer {TOKEN}"})):
        with connect(url, additional_headers=headers, max_size=None) as ws:
            ws.send(frame_message(2, frame_set.jpeg))
            reply = msgpack.unpackb(ws.recv(timeout=30), raw=False)
            assert reply["seq"] == 2 and "error" not in reply, reply


# -- overload ---------------------------------------------------------------------------------------


def test_overload_gives_503_with_retry_after(
    make_server: Callable[..., LiveServer], wide_weights_file: Path, image_files: Files
) -> None:
    """One slot in the queue, one frame set per network call (~0.15 s each), six clients at once: the
    surplus is refused at once with 503 and Retry-After, nothing else fails, and the service recovers."""
    busy = make_server(model=wide_weights_file, queue_size=1, max_batch=1, warmup=False)

    def client(_: int) -> list[httpx.Response]:
        with httpx.Client(base_url=busy.base_url, timeout=120) as c:
            return [c.post("/v1/bev", files=image_files, params={"format": "raw"}) for _ in range(4)]

    with ThreadPoolExecutor(6) as pool:
        replies = [r for batch in pool.map(client, range(6)) for r in batch]
    statuses = sorted({r.status_code for r in replies})
    assert statuses == [200, 503], statuses
    for reply in replies:
        if reply.status_code == 503:
            check_error(reply, 503, "overloaded", "waiting")
            assert int(reply.headers["retry-after"]) >= 1
    assert httpx.get(busy.url("/healthz")).status_code == 200
    after = httpx.post(busy.url("/v1/bev"), files=image_files, timeout=120)
    assert after.status_code == 200, "the service recovers once the burst is over"
    rejected = overload_rejections(busy)
    assert rejected == sum(r.status_code == 503 for r in replies)
