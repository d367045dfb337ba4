"""``/docs`` works offline: the Swagger UI page names nothing outside the service, its assets are served
by the service (and kept out of the OpenAPI document), and a headless Chromium that can reach nothing
but 127.0.0.1 renders the operations with no console error."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser import chromium, needs_chromium, wait_for
from tests.service.conftest import LiveServer

# Every host name fails to resolve; 127.0.0.1 is an address, so the service stays reachable.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
TOKEN = "docs-test-token"


def linked_assets(page: str) -> dict[str, str]:
    """{URL: what it is}: the scripts, stylesheets and icons the page loads."""
    assets = {src: "script" for src in re.findall(r'<script[^>]*\bsrc="([^"]*)"', page)}
    for tag in re.findall(r"<link[^>]*>", page):
        href = re.search(r'\bhref="([^"]*)"', tag)
        rel = re.search(r'\brel="([^"]*)"', tag)
        assert href and rel, tag
        assets[href.group(1)] = "stylesheet" if rel.group(1) == "stylesheet" else "icon"
    return assets


CONTENT_TYPES = {"script": "javascript", "stylesheet": "text/css", "icon": "image/"}


# --- over HTTP -----------------------------------------------------------------------------------


def test_page_names_no_outside_url(server: LiveServer) -> None:
    page = httpx.get(server.url("/docs"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.headers
    assert "SwaggerUIBundle(" in page.text
    outside = [url for url in re.findall(r"https?://[^\s\"'<>]+", page.text) if urlsplit(url).hostname != "127.0.0.1"]
    assert outside == [], "the page must fetch nothing from outside the service"
    assets = linked_assets(page.text)
    assert sorted(assets.values()) == ["icon", "script", "stylesheet"], assets
    assert all(url.startswith("/docs/assets/") for url in assets), assets  # no protocol-relative //host either
    assert '"validatorUrl": null' in page.text, "the validator badge loads an image from swagger.io"


def test_assets_are_served_with_their_types(server: LiveServer) -> None:
    page = httpx.get(server.url("/docs")).text
    for url, kind in linked_assets(page).items():
        assert url.startswith("/"), f"{url} is not served by the service"
        reply = httpx.get(server.url(url))
        assert reply.status_code == 200, (url, reply.text)
        assert CONTENT_TYPES[kind] in reply.headers["content-type"], (url, reply.headers)
        assert len(reply.content) > 100, url
    # The bundle's own index page is not served: it loads the Petstore demo from the internet.
    missing = httpx.get(server.url("/docs/assets/index.html"))
    assert missing.status_code == 404 and missing.json()["error"] == "not_found", missing.text


def test_docs_routes_are_not_in_the_openapi_document(server: LiveServer) -> None:
    paths = httpx.get(server.url("/openapi.json")).json()["paths"]
    assert "/v1/bev" in paths
    assert [path for path in paths if path.startswith("/docs")] == []


def test_docs_need_no_token(make_server: Callable[..., LiveServer]) -> None:
    """Like the viewer, the page and what it loads are open; the token guards the API it documents."""
    live = make_server(api_token=TOKEN, warmup=False)
    for path in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/openapi.json"):
        assert httpx.get(live.url(path)).status_code == 200, path
    assert httpx.get(live.url("/v1/rigs")).status_code == 401


# --- in a browser that can reach nothing but the service -------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(window="1280,1400", extra_args=(OFFLINE,), logs=("browser", "performance")) as driver:
        yield driver


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for since the last call (Chromium's performance log, CDP Network events)."""
    messages = (json.loads(entry["message"])["message"] for entry in driver.get_log("performance"))
    return [m["params"]["request"]["url"] for m in messages if m["method"] == "Network.requestWillBeSent"]


RENDERED = """
return {
  title: document.querySelector('#swagger-ui .info .title')?.textContent ?? '',
  paths: [...document.querySelectorAll('#swagger-ui .opblock-summary-path')].map(e => e.dataset.path),
  // a definition it cannot read (Swagger UI 4 and OpenAPI 3.1), a failed fetch, resolver errors
  errors: [...document.querySelectorAll('#swagger-ui .version-pragma, #swagger-ui .loading-container h4, '
    + '#swagger-ui .errors-wrapper')].map(e => e.textContent.trim()),
};
"""


def console_errors(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def rendered_operations(driver: Any) -> Callable[[], dict[str, Any] | None]:
    """A wait condition that fails at once on a console error or an error shown by Swagger UI."""

    def condition() -> dict[str, Any] | None:
        assert console_errors(driver) == []
        found: dict[str, Any] = driver.execute_script(RENDERED)
        assert found["errors"] == [], found["errors"]
        return found if found["paths"] else None

    return condition


@needs_chromium
def test_swagger_ui_renders_offline(server: LiveServer, browser: Any) -> None:
    browser.get_log("browser")  # drop what came before
    browser.get_log("performance")
    browser.get(server.url("/docs"))
    rendered = wait_for(rendered_operations(browser), "Swagger UI to list the operations")
    assert "bev-service" in rendered["title"] and "bev-service" in browser.title, (rendered["title"], browser.title)
    assert {"/v1/bev", "/v1/rigs"} <= set(rendered["paths"]), rendered["paths"]
    urls = requested_urls(browser)
    assert server.url("/openapi.json") in urls and server.url("/docs/assets/swagger-ui-bundle.js") in urls, urls
    assert all(url.startswith(server.base_url + "/") or url.startswith("data:") for url in urls), urls
    assert console_errors(browser) == []
