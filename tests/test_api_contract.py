"""Schemathesis against /openapi.json: the server does exactly what its document says.

The `st` command itself, as a user would run it: every check, positive and negative
data, 200 examples per operation, and its coverage, fuzzing and stateful phases,
against the real server. Any failure (a 5xx, an undocumented status, a schema-valid
request refused, an invalid one accepted, a response off its schema) fails the test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServeApi

ST = Path(sys.executable).with_name("st")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_check_passes_on_positive_and_negative_data(
    serve_api: ServeApi, tmp_path: Path
) -> None:
    base = str(serve_api().base_url).rstrip("/")
    run = subprocess.run(
        [
            str(ST),
            "--no-color",
            "run",
            f"{base}/openapi.json",
            "--checks",
            "all",
            "--mode",
            "all",
            "--max-examples",
            "200",
            "--generation-database",
            "none",
        ],
        cwd=tmp_path,  # st keeps a cache in its working directory
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "Selected: 10/10" in report  # every method and path of the API was exercised
    assert "No issues found" in report, report
