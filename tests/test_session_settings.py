"""errands works whatever the database's session defaults: time zone, date and interval styles.

A database (or role, or server) whose time zone is not UTC once made a job due at
year 1 or 9999 crash the worker that claimed it and every read of it answer 500:
such timestamps fall outside Python's datetime in a local zone. Every connection
errands opens now fixes its own session settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from errands import Client, JobState
from errands.api.backend import Backend
from errands.database import connect, open_connection
from errands.harness.process import free_port
from errands.harness.waiting import wait_for
from tests.conftest import ServeApi
from tests.daemon import Daemon

EXPECTED = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "application_name": "errands",
}
# Kiritimati (UTC+14) pushes 9999-12-31 into year 10000; New York pushes year 1 into 1 BC.
LOCAL_ZONES = ["Pacific/Kiritimati", "America/New_York"]
YEAR_1 = "0001-01-01T00:00:00+00:00"
YEAR_9999 = "9999-12-31T23:59:59+00:00"
YEAR_2 = "0002-01-01T00:00:00+00:00"  # the earliest a submission may ask for


def _set_database_defaults(url: str, zone: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        name = sql.Identifier(str(conn.info.dbname))
        for setting, value in (
            ("timezone", zone),
            ("datestyle", "SQL, DMY"),
            ("intervalstyle", "sql_standard"),
        ):
            conn.execute(
                sql.SQL("alter database {} set {} = {}").format(
                    name, sql.Identifier(setting), sql.Literal(value)
                )
            )


@pytest.fixture(params=LOCAL_ZONES)
def local_db(request: pytest.FixtureRequest, db_url: str) -> str:
    """The test's database, with defaults far from what errands reads under."""
    _set_database_defaults(db_url, request.param)
    return db_url


def _settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {name: str(conn.execute(f'show "{name}"').fetchone()[0]) for name in EXPECTED}  # type: ignore[index]


def _insert_due_at(url: str, task: str, run_at: str) -> int:
    """A job stored by SQL, as another program (or an older errands) might have."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "insert into errands_jobs (task, payload, run_at) values (%s, '{}', %s) returning id",
            (task, run_at),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_local_defaults_really_break_a_plain_connection(local_db: str) -> None:
    _insert_due_at(local_db, "record", YEAR_1)
    _insert_due_at(local_db, "record", YEAR_9999)
    with psycopg.connect(local_db) as conn, pytest.raises((psycopg.DataError, NotImplementedError)):
        conn.execute("select run_at from errands_jobs order by id").fetchall()


def test_connections_of_the_daemon_and_tools_fix_their_session(local_db: str) -> None:
    with connect(local_db) as conn:
        assert _settings(conn) == EXPECTED
    with open_connection(local_db) as conn:  # not autocommit: the settings survive a rollback
        conn.rollback()
        assert _settings(conn) == EXPECTED


def test_an_application_name_in_the_url_is_kept(local_db: str) -> None:
    with connect(make_conninfo(local_db, application_name="billing-jobs")) as conn:
        assert _settings(conn) == {**EXPECTED, "application_name": "billing-jobs"}


def test_the_api_pool_fixes_its_session(local_db: str) -> None:
    backend = Backend(local_db)  # the API's request threads and their pool
    backend.open()
    try:
        with backend.connection() as conn:
            assert _settings(conn) == EXPECTED
    finally:
        backend.close()


def test_the_client_reads_edge_dates_under_any_local_zone(local_db: str) -> None:
    early = _insert_due_at(local_db, "record", YEAR_1)
    late = _insert_due_at(local_db, "record", YEAR_9999)
    with Client(local_db) as client:
        assert client.get(early).run_at.isoformat() == YEAR_1  # type: ignore[union-attr]
        assert [job.id for job in client.list()] == [late, early]
        assert client.cancel(late).state is JobState.CANCELLED
        stored = client.enqueue("record", run_at=datetime.fromisoformat(YEAR_2))
        assert stored.run_at.isoformat() == YEAR_2


def test_the_api_answers_for_edge_dates_under_any_local_zone(
    local_db: str, serve_api: ServeApi
) -> None:
    api = serve_api(url=local_db)
    early = _insert_due_at(local_db, "record", YEAR_1)
    late = _insert_due_at(local_db, "record", YEAR_9999)
    assert api.get(f"/jobs/{early}").json()["run_at"] == YEAR_1
    assert [job["id"] for job in api.get("/jobs").json()["jobs"]] == [late, early]
    cancelled = api.post(f"/jobs/{late}/cancel")
    assert (cancelled.status_code, cancelled.json()["run_at"]) == (200, YEAR_9999)
    created = api.post("/jobs", json={"task": "record", "run_at": YEAR_2})
    assert (created.status_code, created.json()["run_at"]) == (201, YEAR_2)


@pytest.fixture
def daemon_with_api(local_db: str, tmp_path: Any) -> Iterator[tuple[Daemon, httpx.Client]]:
    with psycopg.connect(local_db, autocommit=True) as conn:
        conn.execute(
            "create table test_executions ("
            " job_id bigint, attempt int, pid int, at timestamptz default clock_timestamp())"
        )
    port = free_port()
    daemon = Daemon(local_db, tmp_path / "daemon.log", "--workers", "1", "--port", str(port))
    daemon.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield daemon, http
    finally:
        daemon.kill()


def test_a_real_daemon_claims_runs_and_serves_edge_dates(
    daemon_with_api: tuple[Daemon, httpx.Client], local_db: str
) -> None:
    daemon, http = daemon_with_api
    (worker,) = daemon.wait_for_workers(1)
    early = _insert_due_at(local_db, "record", YEAR_1)
    late = _insert_due_at(local_db, "record", YEAR_9999)
    with psycopg.connect(local_db, autocommit=True) as conn:
        conn.execute("notify errands_jobs, 'default'")

    def completed() -> dict[str, Any] | None:
        try:
            job: dict[str, Any] = http.get(f"/jobs/{early}").json()
        except httpx.HTTPError:
            return None  # the HTTP child is still starting
        return job if job.get("state") == "completed" else None

    job = wait_for(completed, what="the job due at year 1 to run")
    assert (job["run_at"], job["attempts"], job["errors"]) == (YEAR_1, 1, [])
    assert daemon.query("select job_id from test_executions") == [(early,)]
    listed = http.get("/jobs")
    assert listed.status_code == 200
    assert [j["id"] for j in listed.json()["jobs"]] == [late, early]
    cancelled = http.post(f"/jobs/{late}/cancel")
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled")
    assert daemon.wait_for_workers(1) == [worker]  # the worker never crashed
    assert not [e for e in daemon.log_events() if e.get("level") == "error"]
    assert daemon.stop() == 0
