"""Limits through real processes (docs/guides/limits.md): two `errands run`
supervisors share one database, workers are SIGKILLed mid-job, and the tasks' own record of
when each attempt ran (tests/daemon_tasks.py) is checked against the limits."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from errands import Client
from errands.harness.chaos import most_at_once
from errands.harness.waiting import wait_for
from tests.conftest import migrated_database
from tests.daemon import Daemon

pytestmark = pytest.mark.slow
LIMITED, KEYED, KEYS, RATED = 18, 12, ("a", "b", "c"), 16
HOLD_SECONDS = 0.4
KILLS = 2

Interval = tuple[float, float]


@dataclass
class Run:
    """What the scenario left: each attempt's interval, by task and key, and the jobs."""

    intervals: dict[tuple[str, str], list[Interval]]
    claims: dict[str, list[float]]  # started_at of each attempt's claim, by task
    states: dict[str, int]
    kills: int


def _intervals(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], list[Interval]]:
    """From the start an attempt recorded to the end it recorded, or, killed, to when its job
    was released (the recovery's entry in its errors)."""
    rows = conn.execute(
        """
        select job.task, coalesce(job.payload->>'key', ''),
               extract(epoch from s.at)::float8,
               extract(epoch from coalesce(e.at, (
                   select (err->>'at')::timestamptz from jsonb_array_elements(job.errors) err
                   where (err->>'attempt')::int = s.attempt and err ? 'worker')))::float8
        from test_executions s
        join errands_jobs job on job.id = s.job_id
        left join test_ends e on (e.job_id, e.attempt) = (s.job_id, s.attempt)
        where job.task in ('limited_hold', 'keyed_hold')
        """
    ).fetchall()
    found: dict[tuple[str, str], list[Interval]] = {}
    for task, key, start, end in rows:
        assert end is not None, f"an attempt of {task} neither ended nor was released"
        found.setdefault((task, key), []).append((start, end))
    return found


def _kill_a_worker_running(db_url: str, daemons: list[Daemon], task: str) -> bool:
    ours = {pid for daemon in daemons for pid in daemon.children()}
    with psycopg.connect(db_url, autocommit=True) as conn:
        owners = conn.execute(
            "select lease_owner from errands_jobs where state = 'in_progress' and task = %s",
            (task,),
        ).fetchall()
    pids = [int(owner.split(":")[1]) for (owner,) in owners if int(owner.split(":")[1]) in ours]
    if not pids:
        return False
    os.kill(pids[0], signal.SIGKILL)
    return True


@pytest.fixture(scope="module")
def run(
    server_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    logs = tmp_path_factory.mktemp("limits-daemons")
    with migrated_database(server_url) as db_url:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "create table test_executions (job_id bigint, attempt int, pid int,"
                " at timestamptz default clock_timestamp());"
                "create table test_ends (job_id bigint, attempt int,"
                " at timestamptz default clock_timestamp())"
            )
        daemons = [
            Daemon(
                db_url,
                logs / f"host-{n}.log",
                "--workers",
                "2",
                "--concurrency",
                "4",
                ERRANDS_HOSTNAME=f"host-{n}",
            ).start()
            for n in (1, 2)
        ]
        try:
            for daemon in daemons:
                daemon.wait_for_workers(2)
            with Client(db_url) as client:
                client.enqueue_many(
                    [{"task": "limited_hold", "payload": {"seconds": HOLD_SECONDS}}] * LIMITED
                    + [
                        {
                            "task": "keyed_hold",
                            "payload": {"key": KEYS[n % 3], "seconds": HOLD_SECONDS},
                        }
                        for n in range(KEYED)
                    ]
                    + [{"task": "rated"}] * RATED
                )
            kills = 0
            deadline = time.monotonic() + 30
            while kills < KILLS and time.monotonic() < deadline:
                time.sleep(0.5)
                kills += _kill_a_worker_running(db_url, daemons, "limited_hold")

            def finished() -> bool:
                with psycopg.connect(db_url, autocommit=True) as conn:
                    row = conn.execute(
                        "select count(*) from errands_jobs where state <> 'completed'"
                    ).fetchone()
                return row is not None and row[0] == 0

            wait_for(finished, timeout=90, what="every job to complete")
        finally:
            for daemon in daemons:
                daemon.stop()
        with psycopg.connect(db_url, autocommit=True) as conn:
            claims: dict[str, list[float]] = {}
            for task, at in conn.execute(
                "select task, extract(epoch from started_at)::float8 from errands_jobs"
            ):
                claims.setdefault(task, []).append(at)
            states = dict(conn.execute("select state::text, count(*) from errands_jobs group by 1"))
            yield Run(_intervals(conn), claims, states, kills)


def test_every_limited_job_completes_through_kills(run: Run) -> None:
    assert run.kills == KILLS
    assert run.states == {"completed": LIMITED + KEYED + RATED}


def test_a_concurrency_limit_holds_across_two_supervisors_and_kills(run: Run) -> None:
    limited = run.intervals["limited_hold", ""]
    assert len(limited) >= LIMITED + KILLS  # the killed attempts ran again
    assert most_at_once(limited) == 3  # reached, never passed


def test_a_key_limit_overlaps_keys_but_never_within_one(run: Run) -> None:
    by_key = [run.intervals["keyed_hold", key] for key in KEYS]
    assert all(most_at_once(intervals) == 1 for intervals in by_key)
    assert most_at_once([i for intervals in by_key for i in intervals]) > 1


def test_a_rate_never_starts_more_in_any_second(run: Run) -> None:
    starts = sorted(run.claims["rated"])
    # Every window of one second holding a fifth start would hold starts[n] and starts[n + 4].
    assert all(later - earlier >= 1.0 for earlier, later in zip(starts, starts[4:], strict=False))
    assert starts[-1] - starts[0] < RATED / 4 + 2  # and the rate was used, not idled away
