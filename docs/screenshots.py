"""Make the README's dashboard screenshots with headless Chromium (as the browser tests do).

    .venv/bin/python docs/screenshots.py http://127.0.0.1:3000 JOB_ID

writes docs/overview.png (the overview) and docs/job.png (job JOB_ID).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

HERE = Path(__file__).parent
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def main(base: str, job_id: str) -> None:
    with tempfile.TemporaryDirectory(prefix="errands-chromium-") as profile:
        options = Options()
        options.binary_location = "/usr/bin/chromium"
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            for path, name, height in (
                ("/ui", "overview.png", 860),
                (f"/ui/jobs/{job_id}", "job.png", 1500),  # down to the tracebacks
            ):
                driver.set_window_size(1280, height)
                driver.get(base.rstrip("/") + path)
                driver.save_screenshot(str(HERE / name))
        finally:
            driver.quit()


if __name__ == "__main__":
    main(*sys.argv[1:3])
