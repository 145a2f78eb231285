"""A real headless Chromium for the tests of pages, driven by Selenium (Debian `chromium` and `chromium-driver`).

    with headless_chromium() as driver:   # skips the test when Chromium or its driver is not installed
        driver.get(url)
        assert not console_errors(driver)
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def _first(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


@contextlib.contextmanager
def headless_chromium(width: int = 1440, height: int = 900) -> Iterator[Any]:
    browser, driver_path = _first(CHROMIUM_NAMES), _first(DRIVER_NAMES)
    if browser is None or driver_path is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(scripts/test.sh does) to run the page tests")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-extensions", f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any, expected: Callable[[str], bool] = lambda _: False) -> list[str]:
    """The console's errors (script exceptions, failed loads) since the last call, less those `expected` accepts."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not expected(entry["message"])]
