"""A schedule for the daemon tests of periodic jobs (tests/test_periodic_daemons.py).

Its interval and catch-up come from the environment, so each test picks its own;
the task records the tick it was given, outside the jobs table.
"""

from __future__ import annotations

import os

import psycopg

import errands


@errands.periodic(
    every=int(os.environ.get("TEST_TICK_EVERY", "1")),
    catch_up=os.environ.get("TEST_TICK_CATCH_UP", "1") == "1",
    payload={"source": "periodic_tasks"},
)
@errands.task
def tick(source: str) -> None:
    job = errands.current_job()
    with psycopg.connect(os.environ["ERRANDS_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "insert into test_ticks (job_id, run_at) values (%s, %s)", (job.id, job.run_at)
        )
