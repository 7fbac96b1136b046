"""The chaos workload's tasks. Each records its start and its finish in tables of
the harness's own, outside the jobs table, so the verdict does not trust the
code it checks."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

from errands.database import open_connection
from errands.tasks import current_job, task

_local = threading.local()

RECORD_TABLES = """
create table if not exists chaos_starts (
    job_id bigint not null, attempt int not null, pid int not null,
    at timestamptz not null default clock_timestamp());
create table if not exists chaos_finishes (
    job_id bigint not null, attempt int not null, pid int not null, token text not null,
    at timestamptz not null default clock_timestamp());
"""


def _record(sql: str, *params: Any) -> None:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        # No prepared statements: the URL may go through a transaction-pooling PgBouncer.
        url = os.environ["ERRANDS_DATABASE_URL"]
        conn = _local.conn = open_connection(url, autocommit=True, prepare_threshold=None)
    conn.execute(sql.encode(), params)


def _started() -> None:
    job = current_job()
    _record(
        "insert into chaos_starts (job_id, attempt, pid) values (%s, %s, %s)",
        job.id,
        job.attempt,
        os.getpid(),
    )


def _finished() -> dict[str, Any]:
    """Record a successful return, and return what proves which attempt produced the result."""
    job = current_job()
    token = uuid.uuid4().hex
    _record(
        "insert into chaos_finishes (job_id, attempt, pid, token) values (%s, %s, %s, %s)",
        job.id,
        job.attempt,
        os.getpid(),
        token,
    )
    return {"attempt": job.attempt, "pid": os.getpid(), "token": token}


@task("chaos.quick")
def quick() -> dict[str, Any]:
    _started()
    return _finished()


@task("chaos.slow")
def slow(seconds: float) -> dict[str, Any]:
    """Outlives several leases: only heartbeats keep it."""
    _started()
    time.sleep(seconds)
    return _finished()


@task("chaos.flaky")
def flaky(fail_times: int) -> dict[str, Any]:
    """Fails its first `fail_times` attempts, then succeeds."""
    _started()
    if current_job().attempt <= fail_times:
        raise RuntimeError(f"planned failure of attempt {current_job().attempt}")
    return _finished()


@task("chaos.doomed")
def doomed() -> None:
    """Always fails: it must end dead with its budget spent."""
    _started()
    raise RuntimeError("this job always fails")
