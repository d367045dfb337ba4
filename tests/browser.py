"""Debian's headless Chromium through chromedriver (selenium), for the tests that look at pages as users
do: the viewer and ``/docs``. ``needs_chromium`` skips, saying why, where the browser is absent."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

needs_chromium = pytest.mark.skipif(
    not CHROMEDRIVER.exists() or not CHROMIUM.exists(),
    reason=f"headless Chromium needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium and chromium-driver)",
)


@contextmanager
def chromium(*, window: str, extra_args: tuple[str, ...] = (), logs: tuple[str, ...] = ("browser",)) -> Iterator[Any]:
    """A headless Chromium of ``window`` ("1440,1500") keeping ``logs`` at level ALL, quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={window}",
        *extra_args,
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", dict.fromkeys(logs, "ALL"))
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    """``condition()``'s first truthy value, polled every 0.1 s; fails naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.1)
