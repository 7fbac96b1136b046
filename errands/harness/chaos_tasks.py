"""The chaos workload's tasks. Each records its start and its finish in tables of
the harness's own, outside the jobs table, so the verdict does not trust the
code it checks. Slow attempts also leave a trace in a file of their own while
they run (ERRANDS_CHAOS_TRACES), which no partition of the database cuts off:
its last line says when the attempt stopped."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from errands.database import open_connection
from errands.periodic import periodic
from errands.tasks import current_job, task

TRACES = "ERRANDS_CHAOS_TRACES"
TICK_SECONDS = 0.1
BUDGET = 10  # attempts of jobs that should complete: room for many crashes
# Faults aimed at a job spare it once it has lost half its budget (chaos.fair_targets).
SPARED_FROM_ATTEMPT = BUDGET // 2 + 1

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


def trace(line: str) -> None:
    """Append `line` and the monotonic time to this attempt's trace file."""
    directory = os.environ.get(TRACES)
    if directory:
        job = current_job()
        with (Path(directory) / f"{job.id}-{job.attempt}").open("a") as traces:
            traces.write(f"{line} {time.monotonic()}\n")


@task("chaos.slow")
def slow(seconds: float) -> dict[str, Any]:
    """Outlives several leases: only heartbeats keep it."""
    _started()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        trace("tick")
        time.sleep(TICK_SECONDS)
    trace("returned")
    return _finished()


@task("chaos.slow_async")
async def slow_async(seconds: float) -> dict[str, Any]:
    """The coroutine twin of chaos.slow; it records on a thread, never blocking the loop."""
    await asyncio.to_thread(_started)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            trace("tick")
            await asyncio.sleep(TICK_SECONDS)
    except asyncio.CancelledError:
        trace("cancelled")
        raise
    trace("returned")
    return await asyncio.to_thread(_finished)


@periodic(every=2)
@task("chaos.tick")
def tick() -> dict[str, Any]:
    """Every two seconds, from whichever scheduler enqueues the tick first."""
    _started()
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


# Limits across every host (docs/guides/limits.md): the verdict checks that the
# recorded attempts never ran more at once than these allow.
LIMITED_AT_ONCE = 2
KEYED_AT_ONCE = 1


@task("chaos.limited", concurrency=LIMITED_AT_ONCE)
def limited(seconds: float) -> dict[str, Any]:
    """At most LIMITED_AT_ONCE in progress at once, whatever the hosts and faults."""
    _started()
    time.sleep(seconds)
    return _finished()


@task("chaos.keyed", concurrency=KEYED_AT_ONCE, concurrency_key="key")
def keyed(key: str, seconds: float) -> dict[str, Any]:
    """At most KEYED_AT_ONCE in progress per key."""
    _started()
    time.sleep(seconds)
    return _finished()
