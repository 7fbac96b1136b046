"""Periodic jobs in real supervisors: one job per tick across daemons, kills and downtime.

Each daemon is a real `errands run --no-http` on the test's database with
tests/periodic_tasks.py, whose `tick` task records the tick it was given.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from errands.harness.waiting import wait_for
from errands.queue.ticks import rfc3339
from tests.daemon import Daemon

StartDaemon = Callable[..., Daemon]
SECOND = timedelta(seconds=1)


@pytest.fixture
def start_ticking(start_daemon: StartDaemon) -> Iterator[Callable[..., Daemon]]:
    def start(every: int = 1, catch_up: bool = True) -> Daemon:
        return start_daemon(
            "--workers",
            "1",
            ERRANDS_TASKS="periodic_tasks",
            TEST_TICK_EVERY=str(every),
            TEST_TICK_CATCH_UP="1" if catch_up else "0",
        )

    yield start


@pytest.fixture(autouse=True)
def ticks_table(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("create table test_ticks (job_id bigint, run_at timestamptz)")


def tick_jobs(daemon: Daemon) -> list[dict[str, Any]]:
    rows = daemon.query(
        "select id, run_at, created_at, idempotency_key from errands_jobs"
        " where task = 'tick' order by run_at"
    )
    return [dict(zip(("id", "run_at", "created_at", "key"), row, strict=True)) for row in rows]


def scheduler_started(daemon: Daemon) -> datetime:
    """The moment the daemon's scheduler started (after its catch-up), from its log."""
    event = wait_for(
        lambda: next((e for e in daemon.log_events() if e["event"] == "scheduler started"), None),
        what="the scheduler to start",
    )
    return datetime.fromisoformat(event["now"])


def assert_one_job_per_tick_without_gaps(jobs: list[dict[str, Any]]) -> None:
    ticks = [job["run_at"] for job in jobs]
    assert len(ticks) == len(set(ticks)), "two jobs for one tick"
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    missing = [tick for tick, gap in zip(ticks, gaps, strict=False) if gap != SECOND]
    assert not missing, f"ticks missing after {missing}"
    assert all(job["key"] == f"periodic:tick:{rfc3339(job['run_at'])}" for job in jobs)


def lateness_report(jobs: list[dict[str, Any]]) -> str:
    late = sorted((job["created_at"] - job["run_at"]).total_seconds() * 1000 for job in jobs)
    p99 = late[min(len(late) - 1, round(0.99 * (len(late) - 1)))]
    return (
        f"ticks observed {len(jobs)}, jobs per tick 1, lateness (tick to enqueued) "
        f"p50 {statistics.median(late):.1f} ms, p99 {p99:.1f} ms, max {late[-1]:.1f} ms"
    )


@pytest.mark.slow
def test_three_supervisors_make_one_job_per_tick_even_when_two_are_killed(
    start_ticking: Callable[..., Daemon],
) -> None:
    daemons = [start_ticking() for _ in range(3)]
    started = max(scheduler_started(daemon) for daemon in daemons)
    wait_for(lambda: [j for j in tick_jobs(daemons[0]) if j["run_at"] > started], what="a tick")
    time.sleep(10)
    killed_at = datetime.now(started.tzinfo)
    for daemon in daemons[:2]:
        daemon.kill()  # SIGKILL: its children exit on their own, within a quarter second
    time.sleep(10)
    assert daemons[2].stop() == 0
    jobs = tick_jobs(daemons[2])

    assert_one_job_per_tick_without_gaps(jobs)
    assert jobs[0]["run_at"] < killed_at - 5 * SECOND < killed_at + 5 * SECOND < jobs[-1]["run_at"]
    enqueued = [e for d in daemons for e in d.log_events() if e["event"] == "periodic job enqueued"]
    assert sorted(e["job_id"] for e in enqueued) == sorted(j["id"] for j in jobs)
    recorded = dict(daemons[2].query("select job_id, run_at from test_ticks"))
    assert recorded and all(recorded[j["id"]] == j["run_at"] for j in jobs if j["id"] in recorded)
    print(lateness_report(jobs))


@pytest.mark.slow
@pytest.mark.parametrize("catch_up", [True, False])
def test_after_all_supervisors_stopped_across_five_ticks_only_the_latest_is_caught_up(
    start_ticking: Callable[..., Daemon], catch_up: bool
) -> None:
    first = start_ticking(catch_up=catch_up)
    wait_for(lambda: len(tick_jobs(first)) >= 3, what="three ticks")
    assert first.stop() == 0
    last_before = tick_jobs(first)[-1]["run_at"]
    time.sleep(6)  # five ticks or more with no scheduler running

    second = start_ticking(catch_up=catch_up)
    restarted = scheduler_started(second)
    wait_for(lambda: tick_jobs(second)[-1]["run_at"] >= restarted + 3 * SECOND, what="ticks")
    assert second.stop() == 0
    jobs = tick_jobs(second)

    assert restarted - last_before >= 5 * SECOND
    missed = [job["run_at"] for job in jobs if last_before < job["run_at"] <= restarted]
    assert missed == ([restarted] if catch_up else [])  # ticks are whole seconds
    assert_one_job_per_tick_without_gaps([j for j in jobs if j["run_at"] >= restarted])


def test_a_bad_schedule_is_named_at_start_up_and_the_supervisor_stays_up(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon("--workers", "1", ERRANDS_TASKS="bad_periodic_tasks")

    def scheduler_restarts() -> list[dict[str, Any]] | None:
        found = [
            e
            for e in daemon.log_events()
            if e["event"] == "child exited; restarting" and e["child"] == "scheduler-1"
        ]
        return found or None

    [exited, *_] = wait_for(scheduler_restarts, what="the scheduler child to be restarted")
    assert (
        "periodic schedule 'nightly_report': unknown time zone 'Europe/Berln'" in (exited["reason"])
    )
    assert daemon.running()
    assert daemon.stop() == 0


def test_without_schedules_the_scheduler_exits_and_is_not_restarted(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon("--workers", "1")  # tests/daemon_tasks.py declares no schedule
    wait_for(
        lambda: any(e["event"].startswith("no periodic schedules") for e in daemon.log_events()),
        what="the scheduler to find nothing to do",
    )
    daemon.wait_for_workers(1)
    assert not [
        e
        for e in daemon.log_events()
        if e["event"] == "child exited; restarting" and e["child"] == "scheduler-1"
    ]
    assert daemon.stop() == 0
