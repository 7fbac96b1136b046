"""Migrations: applied once and recorded with checksums; edited, missing or newer ones refused;
the records of an errands from before checksums adopted; live jobs carried over."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from errands import Client, JobState
from errands.errors import SchemaMismatch
from errands.queue.lease import Completion, claim, complete
from errands.schema.migrator import applied_versions, available_migrations, check, migrate
from tests.clients import Portal, blocking_client, closing

Conn = psycopg.Connection[Any]
LEGACY = Path(__file__).parent / "legacy_schema"
# Migrations from this one on say whether older code runs against them; those before
# were written when nothing read it, and count as "stops".
FIRST_DECLARING = 9
LEGACY_TABLE = (
    "create table errands_migrations (version integer primary key, name text not null,"
    " applied_at timestamptz not null default now())"
)


@pytest.fixture
def empty(empty_db_url: str) -> Iterator[Conn]:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        yield conn


def errands_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ERRANDS_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "errands", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- applying -------------------------------------------------------------------------------


def test_fresh_database_gets_every_migration_recorded_with_its_checksum(empty: Conn) -> None:
    applied = migrate(empty)
    assert applied == list(available_migrations())
    recorded = empty.execute(
        "select version, name, checksum, older_code_runs from errands_migrations order by version"
    ).fetchall()
    assert recorded == [(m.version, m.name, m.checksum, m.older_code_runs) for m in applied]
    assert empty.execute("select to_regclass('errands_jobs')").fetchone() == ("errands_jobs",)
    assert check(empty) == []


def test_running_migrations_again_changes_nothing(empty: Conn) -> None:
    migrate(empty)
    assert migrate(empty) == []


def test_two_processes_migrating_at_once_apply_each_migration_once(empty_db_url: str) -> None:
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def run() -> None:
        with psycopg.connect(empty_db_url, autocommit=True) as conn:
            barrier.wait()
            results.append(migrate(conn))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(len(applied) for applied in results) == [0, len(available_migrations())]
    with psycopg.connect(empty_db_url) as conn:
        rows = conn.execute("select version from errands_migrations").fetchall()
    assert sorted(v for (v,) in rows) == [m.version for m in available_migrations()]


def test_every_new_migration_declares_whether_older_code_runs_against_it() -> None:
    declaration = re.compile(r"^--\s*older code:\s*(runs|stops)\b", re.MULTILINE)
    silent = [
        m.label
        for m in available_migrations()
        if m.version >= FIRST_DECLARING and not declaration.search(m.sql)
    ]
    assert silent == [], "add '-- older code: runs' (additive) or '-- older code: stops'"


# -- refusing -------------------------------------------------------------------------------


def test_a_database_without_the_schema_is_refused_naming_errands_migrate(empty: Conn) -> None:
    with pytest.raises(SchemaMismatch, match="errands migrate"):
        check(empty)


def test_a_schema_behind_the_code_is_refused_naming_errands_migrate(
    db_url: str, conn: Conn
) -> None:
    latest = available_migrations()[-1]
    conn.execute("delete from errands_migrations where version = %s", (latest.version,))
    with pytest.raises(SchemaMismatch, match=rf"{latest.label} not applied.*errands migrate"):
        check(conn)
    result = errands_cli(db_url, "stats")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "errands migrate" in result.stderr


def test_errands_run_refuses_a_schema_behind_its_code_in_one_line(db_url: str, conn: Conn) -> None:
    conn.execute("delete from errands_migrations where version = 1")
    result = errands_cli(db_url, "run", "--no-http", "--workers", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "errands: the database schema is behind this errands "
        "(0001_jobs not applied): run `errands migrate`"
    )


def test_an_application_client_never_migrates(
    empty_db_url: str, empty: Conn, client_kind: str, portal: Portal
) -> None:
    client = blocking_client(client_kind, empty_db_url, portal)
    with closing(client), pytest.raises(SchemaMismatch, match="errands migrate"):
        client.enqueue("t")
    assert applied_versions(empty) == set()


def test_an_edited_migration_is_refused_by_check_and_by_migrate(db_url: str, conn: Conn) -> None:
    conn.execute("update errands_migrations set checksum = 'edited' where version = 5")
    with pytest.raises(SchemaMismatch, match=r"0005_queues.*never be edited"):
        check(conn)
    with pytest.raises(SchemaMismatch, match=r"0005_queues.*never be edited"):
        migrate(conn)
    result = errands_cli(db_url, "migrate")
    assert result.returncode == 2 and "0005_queues" in result.stderr


def test_a_newer_schema_whose_migrations_let_older_code_run_is_accepted(conn: Conn) -> None:
    record_future(conn, older_code_runs=True)
    assert [m.label for m in check(conn)] == ["9999_future_column"]
    assert migrate(conn) == []


def test_a_newer_schema_that_older_code_must_not_run_against_is_refused(
    db_url: str, conn: Conn
) -> None:
    record_future(conn, older_code_runs=False)
    with pytest.raises(SchemaMismatch, match=r"9999_future_column.*upgrade errands"):
        check(conn)
    result = errands_cli(db_url, "stats")
    assert result.returncode == 2 and "upgrade errands" in result.stderr


def record_future(conn: Conn, *, older_code_runs: bool) -> None:
    conn.execute(
        "insert into errands_migrations (version, name, checksum, older_code_runs)"
        " values (9999, 'future_column', 'x', %s)",
        (older_code_runs,),
    )


# -- adopting the records of an errands from before checksums, jobs carried over --------------


def legacy_main(conn: Conn) -> None:
    """What main made before checksums: every migration up to 0008, recorded without them."""
    conn.execute(LEGACY_TABLE)
    for m in available_migrations():
        if m.version <= 8:
            conn.execute(m.sql.encode())
            conn.execute("insert into errands_migrations values (%s, %s)", (m.version, m.name))


def legacy_first_schema(conn: Conn) -> None:
    """The oldest supported schema: 0001 as main first shipped it, before attempt_budget."""
    conn.execute(LEGACY_TABLE)
    conn.execute((LEGACY / "0001_jobs.at-5881b69.sql").read_bytes())
    conn.execute("insert into errands_migrations values (1, 'jobs')")


def legacy_edited_versions(conn: Conn) -> None:
    """0005 before its index and 0007 under its former name, as branches applied them."""
    conn.execute(LEGACY_TABLE)
    known = {m.version: m for m in available_migrations()}
    for version, name, sql in [
        (1, "jobs", known[1].sql.encode()),
        (4, "schedules", known[4].sql.encode()),
        (5, "queues", (LEGACY / "0005_queues.at-0cb438c.sql").read_bytes()),
        (7, "cheap_name_checks", (LEGACY / "0007_cheap_name_checks.at-8e825f0.sql").read_bytes()),
    ]:
        conn.execute(sql)
        conn.execute("insert into errands_migrations values (%s, %s)", (version, name))


LEGACY_DATABASES: dict[str, Callable[[Conn], None]] = {
    "main-before-checksums": legacy_main,
    "first-schema": legacy_first_schema,
    "edited-versions": legacy_edited_versions,
}


@pytest.mark.parametrize("made_by", LEGACY_DATABASES)
def test_migrate_adopts_old_records_and_every_live_job_keeps_its_state(
    made_by: str, empty_db_url: str, empty: Conn
) -> None:
    LEGACY_DATABASES[made_by](empty)
    expected = populate_every_state(empty)
    with pytest.raises(SchemaMismatch, match="without checksums: run `errands migrate`"):
        check(empty)

    migrate(empty)

    assert check(empty) == []
    assert applied_versions(empty) == {m.version for m in available_migrations()}
    with Client(empty_db_url) as client:
        for job_id, (state, attempts, owner) in expected.items():
            job = client.get(job_id)
            assert job is not None, f"job {job_id} ({state}) was lost"
            assert (job.state, job.attempts, job.lease_owner) == (state, attempts, owner)
            assert job.payload == {"n": job_id}
    works_after_migration(empty_db_url, empty, expected)


def populate_every_state(conn: Conn) -> dict[int, tuple[JobState, int, str | None]]:
    """A job in each state the oldest schema knows, written with its columns only."""
    later = datetime.now(UTC) + timedelta(hours=1)
    lease = ("old-host:1:a", later)
    rows = [
        ("pending", 0, None, None, None),
        ("in_progress", 1, *lease, None),
        ("completed", 1, None, None, '{"done": true}'),
        ("failed", 1, None, None, None),
        ("dead", 5, None, None, None),
        ("cancelled", 0, None, None, None),
    ]
    expected = {}
    for state, attempts, owner, expires, result in rows:
        row = conn.execute(
            "insert into errands_jobs (task, payload, state, attempts, max_attempts, lease_owner,"
            " lease_expires_at, result, run_at, idempotency_key)"
            " values ('legacy.task', '{}', %s, %s, 5, %s, %s, %s::jsonb, coalesce(%s, now()), %s)"
            " returning id",
            (state, attempts, owner, expires, result, later if state == "failed" else None, state),
        ).fetchone()
        assert row is not None
        conn.execute(
            "update errands_jobs set payload = jsonb_build_object('n', id) where id = %s", row
        )
        expected[row[0]] = (JobState(state), attempts, owner)
    return expected


def works_after_migration(
    url: str, conn: Conn, jobs: dict[int, tuple[JobState, int, str | None]]
) -> None:
    """The carried-over jobs obey the current code: fenced finish, claim, manual retry."""
    by_state = {state: job_id for job_id, (state, _, _) in jobs.items()}
    running = by_state[JobState.IN_PROGRESS]
    assert complete(conn, "old-host:1:a", [Completion(running, 1, "{}")]) == {running}
    (claimed,) = claim(conn, "new-host:1:b", ["default"], 5, 30)
    assert claimed.id == by_state[JobState.PENDING]
    with Client(url) as client:
        retried = client.retry(by_state[JobState.DEAD])
        assert (retried.state, retried.max_attempts) == (JobState.PENDING, 5 + 5)
        replay = client.enqueue("legacy.task", {"n": claimed.id}, idempotency_key="pending")
        assert replay.id == claimed.id
