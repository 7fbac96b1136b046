"""Tasks for the workflow daemon tests: each child adds up what its parents returned."""

from __future__ import annotations

import os
import time

import psycopg

import errands


@errands.task(name="wf_number")
def number(value: int) -> int:
    return value


@errands.task(name="wf_total")
def total(plus: int = 0) -> dict[str, int]:
    """The sum of the parents' results (a number, or a dict's "sum"), and how many there were."""
    return _sum_of_parents(plus)


@errands.task(name="wf_fail")
def fail() -> None:
    raise errands.Fail("on purpose")


@errands.task(name="wf_slow_number")
def slow_number(value: int, seconds: float) -> int:
    """`number`, its start recorded (test_executions), then taking `seconds`."""
    _record_start()
    time.sleep(seconds)
    return value


@errands.task(name="wf_slow_total")
def slow_total(seconds: float) -> dict[str, int]:
    """`total`, its start recorded (test_executions), then taking `seconds`."""
    _record_start()
    time.sleep(seconds)
    return _sum_of_parents(0)


def _sum_of_parents(plus: int) -> dict[str, int]:
    parents = errands.current_job().parents
    values = [r["sum"] if isinstance(r, dict) else r or 0 for r in parents.values()]
    return {"sum": sum(values) + plus, "parents": len(parents)}


def _record_start() -> None:
    job = errands.current_job()
    with psycopg.connect(os.environ["ERRANDS_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "insert into test_executions (job_id, attempt, pid) values (%s, %s, %s)",
            (job.id, job.attempt, os.getpid()),
        )
