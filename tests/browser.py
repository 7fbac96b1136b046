"""Headless Chromium (Debian's chromium and chromium-driver), for the browser tests and
the documentation's screenshots (docs/screenshots.py)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = os.environ.get("ERRANDS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ERRANDS_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@contextmanager
def headless_chromium(*flags: str) -> Iterator[WebDriver]:
    """A fresh headless Chromium with a profile of its own (and `flags`), quit afterwards."""
    with tempfile.TemporaryDirectory(prefix="errands-chromium-") as profile:
        options = Options()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, *flags, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()
