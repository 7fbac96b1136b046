"""docs/guides/workflows.md runs as written: its task module under the real daemon, and its
script beside it (the script asserts what the guide says)."""

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


def test_the_guides_examples_run_as_written(
    start_daemon: Callable[..., Daemon], db_url: str, tmp_path: Path
) -> None:
    assert write_files("workflows", tmp_path) == ["pipeline.py", "build.py"]
    start_daemon("--workers", "1", ERRANDS_TASKS="pipeline", PYTHONPATH=str(tmp_path))
    build = subprocess.run(
        [sys.executable, "build.py"],
        cwd=tmp_path,
        env={**os.environ, "ERRANDS_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    assert build.stdout.splitlines()[-1] == "done"
