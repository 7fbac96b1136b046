"""Schemathesis against /openapi.json: the server does exactly what its document says.

The `st` command itself, as a user would run it: every check, positive and negative
data, 200 examples per operation, and its coverage, fuzzing and stateful phases,
against the real server. Any failure (a 5xx, an undocumented status, a schema-valid
request refused, an invalid one accepted, a response off its schema) fails the test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from errands.api.endpoints import operations
from errands.api.openapi import document
from tests.conftest import ServeApi

ST = Path(sys.executable).with_name("st")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_check_passes_on_positive_and_negative_data(
    serve_api: ServeApi, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    # Schedules to list, one with a last job: GET /schedules answers with every field.
    conn.execute(
        "insert into errands_schedules (name, task, cron, every_seconds, tz, last_tick,"
        " last_job_id, last_enqueued_at) values"
        " ('nightly', 'report', '30 2 * * *', null, 'Europe/Berlin', null, null, null),"
        " ('often', 'sync', null, 60, 'UTC', now(), 1, now())"
    )
    # No worker runs here: jobs are finished as they are stored (or retried), so that a
    # long poll (GET /jobs/{id}?wait=) answers at once instead of holding its example 60 s.
    conn.execute(
        "create function finish_at_once() returns trigger language plpgsql as $$"
        " begin new.state := 'cancelled'; new.finished_at := now(); return new; end $$;"
        " create trigger finish_at_once before insert or update on errands_jobs"
        " for each row when (new.state in ('pending', 'failed'))"
        " execute function finish_at_once()"
    )
    # st leaves out the document's own path, /openapi.json.
    count = sum(len(methods) for methods in document(operations())["paths"].values())
    base = str(serve_api().base_url).rstrip("/")
    # A schema-valid body may still name a job that does not exist (`after`), a ref no job
    # of the workflow has, or make a cycle: 422 names the field, which no schema can say.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "".join(
            f'[[operations]]\ninclude-name = "{name}"\n'
            "checks.positive_data_acceptance.expected-statuses = "
            '["2xx", "401", "404", "409", "422"]\n'
            for name in ("POST /jobs", "POST /jobs/batch", "POST /workflows")
        )
    )
    run = subprocess.run(
        [
            str(ST),
            "--config-file",
            str(config),
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
    # Every operation the document lists was selected and exercised.
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    assert selected and int(selected[1]) == int(selected[2]) == count - 1, report
    # Every generated case passed every check (warnings, such as ids the run never found
    # for an operation, are not failures).
    assert re.search(r"Test cases:\s+(\d+) generated, \1 passed\s", report), report
