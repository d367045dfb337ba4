"""The viewer in headless Chromium against a real uvicorn on a loopback port: the page loads its metadata,
plays the demo drive through the WebSocket stream, paints the BEV in the class colours, and the browser
logs no error. The screenshot lands in build/artifacts/viewer.png for people to look at."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import yaml

import bev_service.service
from bev_service.runtime.weights import save_model
from bev_service.service.settings import Settings
from tests.browser import chromium, needs_chromium, wait_for
from tests.conftest import DEFAULT_RIG, REPO
from tests.live_server import running_server
from tests.networks import TINY, tiny_model

BACKGROUND, UNKNOWN = 0, 255
VIEWER_DIR = Path(bev_service.service.__file__).resolve().parent / "viewer"
ARTIFACTS = REPO / "build" / "artifacts"
DEMO_FRAMES = 3
TOKEN = "viewer-test-token"

pytestmark = needs_chromium


# --- a real server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_weights_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("viewer-weights") / "tiny.pt"
    save_model(path, tiny_model(), TINY, {"note": "untrained, for the viewer test"})
    return path


def viewer_settings(weights: Path, rigs_dir: Path, **overrides: Any) -> Settings:
    """A tiny untrained network on the default rig, with a short demo drive rendered at a quarter of the
    rig's image size (a whole factor, so its frames go through the rig's scaled tables)."""
    fields: dict[str, Any] = {
        "model": weights,
        "backend": "torch",
        "device": "cpu",
        "rig": DEFAULT_RIG,
        "rigs_dir": rigs_dir,
        "demo_frames": DEMO_FRAMES,
        "demo_scale": 0.25,
        "log_level": "warning",
    }
    return Settings(**{**fields, **overrides})


@pytest.fixture(scope="module")
def server(tiny_weights_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(viewer_settings(tiny_weights_path, tmp_path_factory.mktemp("rigs"))) as live:
        yield live.base_url


# --- a real browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(window="1440,1500") as driver:
        yield driver


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.execute_script("return document.getElementById(arguments[0]).textContent;", element_id)).strip()


def severe_logs(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


CANVAS_COLOURS = """
const canvas = document.getElementById('bev-canvas');
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
const counts = {};
for (let i = 0; i < data.length; i += 4) {
  const key = `${data[i]},${data[i + 1]},${data[i + 2]},${data[i + 3]}`;
  counts[key] = (counts[key] || 0) + 1;
}
return {width: canvas.width, height: canvas.height, counts: counts};
"""


def canvas_colours(driver: Any) -> tuple[int, int, dict[tuple[int, ...], int]]:
    """(width, height, {(r, g, b, a): pixel count}) of the BEV canvas."""
    result = driver.execute_script(CANVAS_COLOURS)
    counts = {tuple(int(v) for v in key.split(",")): n for key, n in result["counts"].items()}
    return int(result["width"]), int(result["height"]), counts


def grid_shape(rig_path: Path) -> tuple[int, int]:
    grid = yaml.safe_load(rig_path.read_text())["grid"]
    (x0, x1), (y0, y1), cell = grid["x_range_m"], grid["y_range_m"], grid["cell_size_m"]
    return round((x1 - x0) / cell), round((y1 - y0) / cell)


LEGEND_SWATCHES = """
const out = {};
for (const swatch of document.querySelectorAll('#legend .swatch')) {
  const style = getComputedStyle(swatch);
  out[swatch.dataset.id] = {colour: style.backgroundColor, image: style.backgroundImage};
}
return out;
"""


def legend_swatches(driver: Any) -> dict[str, dict[str, str]]:
    """{class id: {"colour", "image"}}: the computed backgrounds of the legend's swatches."""
    return dict(driver.execute_script(LEGEND_SWATCHES))


def frame_count(driver: Any) -> int:
    return int(text_of(driver, "frame-count"))


def frames_beyond(driver: Any, count: int) -> Callable[[], bool]:
    """A wait condition that fails at once, with the page's own words, when the page reports an error."""

    def condition() -> bool:
        state = driver.execute_script("return document.getElementById('status').dataset.state;")
        assert state != "error", f"the viewer reports: {text_of(driver, 'status')}"
        return frame_count(driver) > count

    return condition


# --- tests ---------------------------------------------------------------------------------------


def test_page_and_assets_are_served(server: str) -> None:
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element_id in ("bev-canvas", "frame-count", "fps", "play", "stop", "timings", "status"):
        assert f'id="{element_id}"' in page.text
    for asset, kind in (("viewer.js", "javascript"), ("viewer.css", "text/css")):
        reply = httpx.get(f"{server}/viewer/{asset}")
        assert reply.status_code == 200 and kind in reply.headers["content-type"], (asset, reply.headers)
    assert "http://" not in page.text and "https://" not in page.text, "the page must fetch nothing from outside"
    assert "//" not in "".join(re.findall(r'(?:src|href)="([^"]*)"', page.text)), "no protocol-relative URL either"
    # @msgpack/msgpack's browser bundle, shipped as package data with its licence and served by the service
    assert '<script src="viewer/vendor/msgpack.min.js"' in page.text
    bundle = httpx.get(f"{server}/viewer/vendor/msgpack.min.js")
    assert bundle.status_code == 200 and "javascript" in bundle.headers["content-type"]
    assert "MessagePack" in bundle.text
    licence = httpx.get(f"{server}/viewer/vendor/LICENSE")
    assert licence.status_code == 200 and "MessagePack" in licence.text
    assert (VIEWER_DIR / "vendor" / "msgpack.min.js").is_file() and (VIEWER_DIR / "vendor" / "LICENSE").is_file()


def test_msgpack_library_is_loaded_from_the_service(server: str, browser: Any) -> None:
    """The page runs @msgpack/msgpack from the service's own /viewer/vendor/ and every script it loads
    comes from the service's origin."""
    browser.get(f"{server}/")
    wait_for(lambda: text_of(browser, "status") == "ready", "the page to load its metadata")
    found = browser.execute_script(
        """
        return {
          library: typeof MessagePack === 'object' && typeof MessagePack.encode === 'function'
            && typeof MessagePack.decode === 'function',
          origin: location.origin,
          scripts: [...document.scripts].map(s => s.src),
          resources: performance.getEntriesByType('resource').map(r => r.name),
        };
        """
    )
    assert found["library"], "the global MessagePack of @msgpack/msgpack is missing"
    assert found["scripts"] and all(src.startswith(found["origin"] + "/") for src in found["scripts"]), found["scripts"]
    assert f"{found['origin']}/viewer/vendor/msgpack.min.js" in found["scripts"]
    assert all(name.startswith(found["origin"] + "/") for name in found["resources"]), found["resources"]


def test_unknown_cells_are_hatched_apart_from_background(server: str, browser: Any) -> None:
    """The viewer repaints cells of value 255 (near-black in the API palette) in grey stripes; black
    background cells stay black. The drive may show no unknown cell, so a small canvas is painted here."""
    browser.get(f"{server}/")
    wait_for(lambda: text_of(browser, "status") == "ready", "the page to load its metadata")
    result = browser.execute_script(
        """
        const unknown = state.unknownRgb;
        const canvas = document.createElement('canvas');
        canvas.width = 8; canvas.height = 8;
        const ctx = canvas.getContext('2d');
        ctx.fillStyle = 'rgb(0, 0, 0)'; ctx.fillRect(0, 0, 8, 8);
        ctx.fillStyle = `rgb(${unknown})`; ctx.fillRect(0, 0, 4, 8);
        hatchUnknown(ctx, 8, 8);
        const data = ctx.getImageData(0, 0, 8, 8).data;
        const left = new Set(), right = new Set();
        for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) {
          const i = 4 * (8 * y + x);
          (x < 4 ? left : right).add(`${data[i]},${data[i + 1]},${data[i + 2]}`);
        }
        return {unknown: unknown, hatch: UNKNOWN_HATCH.map(String), left: [...left], right: [...right]};
        """
    )
    classes = httpx.get(f"{server}/v1/classes").json()
    assert result["unknown"] == next(c["color_rgb"] for c in classes if c["id"] == UNKNOWN)
    assert sorted(result["left"]) == sorted(result["hatch"]), result
    assert result["right"] == ["0,0,0"], result


def test_msgpack_codec_agrees_with_python(server: str, browser: Any) -> None:
    """The page's encoder (@msgpack/msgpack) writes what the Python msgpack package writes (minimal
    forms), and its decoder reads back what the service's packer produces."""
    browser.get(f"{server}/")
    front = bytes(range(256)) * 2
    plain = {
        "seq": 70000,
        "small": 5,
        "neg": [-5, -200, -70000, -3_000_000_000],
        "big": 2**40,
        "stamp": 1.5,
        "name": "héllo" * 10,
        "flags": [True, False, None],
        "many": list(range(20)),
    }
    value = {**plain, "images": {"front": front, "left": b""}}  # bytes cannot cross into the page: added there
    encoded = browser.execute_script(
        """
        const v = Object.fromEntries(arguments[0]);  // string keys keep their insertion order
        v.images = {front: new Uint8Array(arguments[1]), left: new Uint8Array(0)};
        return Array.from(msgpackEncode(v));
        """,
        list(plain.items()),  # pairs: the driver does not keep a dict's key order, and msgpack maps are ordered
        list(front),
    )
    assert bytes(encoded) == msgpack.packb(value)
    with pytest.raises(Exception, match=r"Extra \d+ of \d+ byte"):  # bytes after the value are refused
        browser.execute_script("msgpackDecode(new Uint8Array(arguments[0]));", [*msgpack.packb(1), 0xC0])
    decoded = browser.execute_script(
        """
        const v = msgpackDecode(new Uint8Array(arguments[0]));
        v.images.front = Array.from(v.images.front);
        v.images.left = Array.from(v.images.left);
        return v;
        """,
        list(msgpack.packb(value)),
    )
    assert decoded.pop("images") == {"front": list(front), "left": []}
    assert decoded == plain


def test_demo_drive_plays_and_paints_the_bev(server: str, browser: Any) -> None:
    browser.get_log("browser")  # drop what earlier tests logged
    browser.get(f"{server}/")
    classes = httpx.get(f"{server}/v1/classes").json()
    classes = classes["classes"] if isinstance(classes, dict) else classes
    wait_for(lambda: text_of(browser, "status") == "ready", "the page to load its metadata")
    legend_items = browser.execute_script("return document.querySelectorAll('#legend li').length;")
    assert legend_items == len(classes)
    swatches = legend_swatches(browser)
    background, unknown = swatches[str(BACKGROUND)], swatches[str(UNKNOWN)]
    assert unknown != background, "unknown and background look alike in the legend"
    assert "gradient" in unknown["image"] and background["image"] == "none", (unknown, background)

    _, _, before = canvas_colours(browser)
    assert set(before) == {(0, 0, 0, 0)}, "the canvas is painted before any grid arrived"
    assert frame_count(browser) == 0

    browser.find_element("id", "play").click()
    wait_for(frames_beyond(browser, DEMO_FRAMES), f"more than {DEMO_FRAMES} grids (the drive loops)", timeout_s=120)
    assert text_of(browser, "status") == "playing"
    assert float(text_of(browser, "fps")) > 0
    assert browser.execute_script("return document.querySelectorAll('#timings tr td.ms').length;") >= 1

    cameras = wait_for(
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('#camera-grid img')].filter(i => i.complete && i.naturalWidth > 0)"
            ".map(i => i.dataset.camera);"
        ),
        "the camera frames to show",
    )
    assert len(cameras) == 4, cameras

    width, height, counts = canvas_colours(browser)
    assert (height, width) == grid_shape(DEFAULT_RIG), "the canvas holds one pixel per BEV cell"
    unknown_rgb = next((*c["color_rgb"], 255) for c in classes if c["id"] == UNKNOWN)
    hatch = {(*rgb, 255) for rgb in browser.execute_script("return UNKNOWN_HATCH;")}
    palette = {(*c["color_rgb"], 255) for c in classes if c["id"] != UNKNOWN} | hatch
    assert not hatch & {(*c["color_rgb"], 255) for c in classes}, "the unknown hatch reuses a class colour"
    assert unknown_rgb not in counts, "cells of value 255 kept the near-black palette colour"
    distinct = [colour for colour, n in counts.items() if n >= 20]
    assert len(distinct) >= 3, f"expected several colours on the BEV canvas, got {counts}"
    on_palette = sum(n for colour, n in counts.items() if colour in palette)
    assert on_palette == width * height, f"colours off the class palette: {set(counts) - palette}"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "viewer.png"))

    browser.find_element("id", "stop").click()
    wait_for(lambda: text_of(browser, "status").startswith("stopped"), "the stop to take effect")
    time.sleep(0.5)  # a reply already on the wire may still be counted
    stopped_at = frame_count(browser)
    time.sleep(1.5)
    assert frame_count(browser) == stopped_at, "frames kept arriving after Stop"

    browser.find_element("id", "play").click()  # a second run opens a new stream and keeps counting
    wait_for(frames_beyond(browser, stopped_at + 1), "grids after playing again")
    browser.find_element("id", "stop").click()
    assert severe_logs(browser) == []


CAMERA_OVERLAYS = """
return [...document.querySelectorAll('#camera-grid .camera-frame')].map(frame => {
  const canvas = frame.querySelector('canvas');
  if (!canvas || !canvas.width) return [frame.dataset.camera, 0, 0, 0];
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let opaque = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) opaque++;
  return [frame.dataset.camera, canvas.width, canvas.height, opaque];
});
"""

OVERLAY_AT = """
const canvas = document.getElementById('bev-overlay');
const ctx = canvas.getContext('2d');
const [u, v] = arguments[0];
const data = ctx.getImageData(Math.round(u * canvas.width), Math.round(v * canvas.height), 1, 1).data;
let drawn = 0;
const all = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
for (let i = 3; i < all.length; i += 4) if (all[i] > 0) drawn++;
return {pixel: Array.from(data), drawn: drawn, size: [canvas.width, canvas.height]};
"""


def test_labels_over_frames_and_the_grid_in_metres(server: str, browser: Any) -> None:
    """With "labels over frames" the stream asks for each camera's label map and the page lays it over the
    frame at the network's size; over the grid, a scale bar, the extent and a marker at each camera."""
    browser.get(f"{server}/")
    wait_for(lambda: text_of(browser, "status") == "ready", "the page to load its metadata")
    browser.find_element("id", "camera-labels").click()
    browser.find_element("id", "play").click()
    rig = httpx.get(f"{server}/v1/rigs/default").json()
    sizes = {c["name"]: c["input_size_wh"] for c in rig["cameras"]}

    def overlays() -> list[list[Any]] | None:
        found = browser.execute_script(CAMERA_OVERLAYS)
        return found if len(found) == 4 and all(f[3] > 0 for f in found) else None

    found = wait_for(overlays, "the four cameras' label overlays", timeout_s=120)
    for camera, width, height, opaque in found:
        assert [width, height] == sizes[camera] and opaque == width * height, (camera, width, height, opaque)
    grid = rig["grid"]
    front = next(c for c in rig["cameras"] if c["name"] == "front")
    u = (grid["y_range_m"][1] - front["position_m"][1]) / (grid["y_range_m"][1] - grid["y_range_m"][0])
    v = (grid["x_range_m"][1] - front["position_m"][0]) / (grid["x_range_m"][1] - grid["x_range_m"][0])
    drawn = browser.execute_script(OVERLAY_AT, [u, v])
    assert drawn["size"] == [2 * grid["cols"], 2 * grid["rows"]]
    assert drawn["pixel"][:3] == [255, 212, 0] and drawn["pixel"][3] == 255, drawn["pixel"]  # the camera marker
    assert 0 < drawn["drawn"] < 0.05 * drawn["size"][0] * drawn["size"][1], "marks, not a painted-over grid"
    assert "x -10" in text_of(browser, "grid-info") and "m" in text_of(browser, "grid-info")
    browser.find_element("id", "camera-labels").click()
    wait_for(
        lambda: not browser.execute_script("return document.querySelectorAll('.camera-frame canvas').length;"),
        "the overlays to go",
    )
    browser.find_element("id", "stop").click()
    assert severe_logs(browser) == []


def test_token_is_sent_on_rest_and_stream(tiny_weights_path: Path, tmp_path: Path, browser: Any) -> None:
    """With BEV_API_TOKEN set, the page without a token says so; with ?token= it loads and plays."""
    settings = viewer_settings(tiny_weights_path, tmp_path / "rigs", api_token=TOKEN, warmup=False)
    with running_server(settings) as live:
        base = live.base_url
        browser.get(f"{base}/")
        wait_for(lambda: "401" in text_of(browser, "status"), "the page to report the missing token")
        for panel in ("model-info", "rig-info", "legend"):  # the panels say why too, not "loading…" forever
            message = wait_for(lambda p=panel: "401" in text_of(browser, p) and text_of(browser, p), f"{panel}: the 401")
            assert "token" in message and "loading" not in message, (panel, message)
            assert "needs a token" in message, (panel, message)
        browser.find_element("id", "play").click()  # playing without the token says so in the camera panel
        wait_for(lambda: "401" in text_of(browser, "camera-grid"), "the camera panel to report the 401")
        assert browser.find_element("id", "play").is_enabled()

        browser.get(f"{base}/?token=wrong-{TOKEN}")
        wait_for(lambda: "refused" in text_of(browser, "model-info"), "the panels to report the refused token")
        assert "401" in text_of(browser, "status") and "refused" in text_of(browser, "rig-info")
        browser.get_log("browser")  # the refused requests are logged; they are the point here

        browser.get(f"{base}/?token={TOKEN}")
        wait_for(lambda: text_of(browser, "status") == "ready", "the page to load with the token")
        browser.find_element("id", "play").click()
        wait_for(frames_beyond(browser, 1), "grids over the authenticated stream", timeout_s=120)
        browser.find_element("id", "stop").click()
        assert severe_logs(browser) == []
