"""Tasks for the daemon tests; each records its start in a table of the test's own.

The record lives outside the jobs table, so tests check what really ran, not
what errands says ran.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg

import errands


def _record_start() -> None:
    job = errands.current_job()
    # A connection per call: it survives the database restarts some tests cause.
    with psycopg.connect(os.environ["ERRANDS_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "insert into test_executions (job_id, attempt, pid) values (%s, %s, %s)",
            (job.id, job.attempt, os.getpid()),
        )


@errands.task
def record(tag: str = "") -> str:
    _record_start()
    return tag


@errands.task
def hold(seconds: float) -> dict[str, Any]:
    """Run for `seconds` on the first attempt, return at once on later ones."""
    _record_start()
    if errands.current_job().attempt == 1:
        time.sleep(seconds)
    return {"pid": os.getpid()}


@errands.task
def hold_every_time(seconds: float) -> None:
    _record_start()
    time.sleep(seconds)


@errands.task("hold_with_timeout", timeout=0.5)
def hold_with_timeout(seconds: float) -> None:
    _record_start()
    time.sleep(seconds)


# -- limited tasks (tests/test_limits_daemons.py) ---------------------------------------------


def _record_end() -> None:
    """The attempt's end, beside its start: a SIGKILLed attempt has none."""
    job = errands.current_job()
    with psycopg.connect(os.environ["ERRANDS_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "insert into test_ends (job_id, attempt) values (%s, %s)", (job.id, job.attempt)
        )


@errands.task(concurrency=3)
def limited_hold(seconds: float) -> None:
    _record_start()
    time.sleep(seconds)
    _record_end()


@errands.task(concurrency=1, concurrency_key="key")
def keyed_hold(key: str, seconds: float) -> None:
    _record_start()
    time.sleep(seconds)
    _record_end()


@errands.task(rate="4/s")
def rated() -> None:
    _record_start()
