"""Headless Debian Chromium via Selenium + chromedriver, for the report browser tests and the bench."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")


def available() -> bool:
    return bool(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER))


@contextmanager
def chromium() -> Iterator[Any]:
    """A fresh Chromium (own --user-data-dir) with browser and performance logging enabled."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="kf-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def network_events(driver: Any) -> tuple[list[str], list[str]]:
    """(requested URLs, failed requests) from the performance log."""
    import json

    requested, failed = [], []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            requested.append(msg["params"]["request"]["url"])
        elif msg.get("method") == "Network.loadingFailed":
            failed.append(f"{msg['params'].get('errorText')} {msg['params'].get('requestId')}")
    return requested, failed


def wait_for(driver: Any, cond: Callable[[], T], what: str, *, timeout: float, screenshot: Path,
             poll: float = 0.3) -> T:
    """``cond()``'s first truthy value, polled every ``poll`` s; after ``timeout`` s a screenshot is saved to
    ``screenshot`` and the failure names ``what``, the page's ``#status`` text and the browser console."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    logs = driver.get_log("browser")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(screenshot))
    status = driver.find_elements("id", "status")
    raise AssertionError(f"timed out waiting for {what}; status {status[0].text if status else None!r}; "
                         f"console: {logs}")


def page_errors(driver: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(SEVERE console entries, failed requests) since the logs were last read: both empty on a clean page."""
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return severe, network_events(driver)[1]
