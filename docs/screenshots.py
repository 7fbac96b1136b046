"""Make the README's dashboard screenshots with headless Chromium (as the browser tests do).

    .venv/bin/python docs/screenshots.py http://127.0.0.1:3000 JOB_ID

writes docs/overview.png (the overview) and docs/job.png (job JOB_ID).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # the repository: its browser set-up is the tests'

from tests.browser import headless_chromium  # noqa: E402


def main(base: str, job_id: str) -> None:
    with headless_chromium("--hide-scrollbars") as driver:
        for path, name, height in (
            ("/ui", "overview.png", 860),
            (f"/ui/jobs/{job_id}", "job.png", 1500),  # down to the tracebacks
        ):
            driver.set_window_size(1280, height)
            driver.get(base.rstrip("/") + path)
            driver.save_screenshot(str(HERE / name))


if __name__ == "__main__":
    main(*sys.argv[1:3])
