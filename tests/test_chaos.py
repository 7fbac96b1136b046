"""The chaos suite's short profile, as CI runs it: faults under load, then the verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Server

CI_PROFILE = Path(__file__).parent.parent / "chaos" / "ci.toml"
pytestmark = pytest.mark.slow


def test_the_ci_chaos_profile_keeps_every_invariant(server: Server, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ERRANDS_DATABASE_URL", "DATABASE_URL")}
    args = [
        "chaos",
        "--profile",
        str(CI_PROFILE),
        "--seed",
        "42",
        "--json",
        str(tmp_path / "r.json"),
    ]
    if server.pgdata is not None:
        env["ERRANDS_DATA_DIR"] = str(server.pgdata)  # the harness may restart it
    else:
        args = ["--database-url", server.url, *args]
    result = subprocess.run(
        [sys.executable, "-m", "errands", *args],
        env={**env, "ERRANDS_LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and sum(report["faults"].values()) > 0
    assert report["submissions"].get("python accepted") and report["submissions"].get(
        "http accepted"
    )
