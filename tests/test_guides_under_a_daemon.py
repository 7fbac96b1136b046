"""Guides whose examples need a daemon of their own run as written: each guide's task
module under the real daemon, and its script beside it (the script asserts what the
guide says, and prints "done")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.guides import write_files

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("guide", "files", "tasks", "script"),
    [
        ("running-jobs", ["billing.py", "shop.py"], "billing", "shop"),
        ("workflows", ["pipeline.py", "build.py"], "pipeline", "build"),
    ],
)
def test_the_guides_examples_run_as_written(
    guide: str,
    files: list[str],
    tasks: str,
    script: str,
    start_daemon: Callable[..., Daemon],
    db_url: str,
    tmp_path: Path,
) -> None:
    assert write_files(guide, tmp_path) == files
    start_daemon("--workers", "1", ERRANDS_TASKS=tasks, PYTHONPATH=str(tmp_path))
    ran = subprocess.run(
        [sys.executable, f"{script}.py"],
        cwd=tmp_path,
        env={**os.environ, "ERRANDS_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "done"
