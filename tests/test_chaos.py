"""The chaos suite's short profiles, as CI runs them: faults under load, then the verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from errands.harness.pgbouncer import PgBouncer
from tests.conftest import Server

PROFILES = Path(__file__).parent.parent / "chaos"
pytestmark = pytest.mark.slow


def run_chaos(server: Server, profile: str, tmp_path: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("ERRANDS_DATABASE_URL", "DATABASE_URL")}
    args = [
        "chaos",
        "--profile",
        str(PROFILES / profile),
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
    report: dict[str, Any] = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and sum(report["faults"].values()) > 0
    assert report["submissions"].get("python accepted") and report["submissions"].get(
        "http accepted"
    )
    return report


def test_the_ci_chaos_profile_keeps_every_invariant(server: Server, tmp_path: Path) -> None:
    report = run_chaos(server, "ci.toml", tmp_path)
    cut_off = {cut["kind"] for cut in report["partitions"]}
    assert cut_off == {"partition_worker", "partition_supervisor", "partition_api"} | (
        {"hang_postgres"} if server.pgdata is not None else set()
    )
    assert report["clock_offsets"] == {"host-1": 1800.0, "host-2": -1800.0}


def test_two_supervisors_through_pgbouncer_keep_every_invariant_under_chaos(
    server: Server, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    # `pgbouncer` only proves it is installed (or opted out of): the harness starts its own.
    report = run_chaos(server, "many-hosts.toml", tmp_path)
    assert report["profile"]["supervisors"] == 2 and report["profile"]["pgbouncer"]
