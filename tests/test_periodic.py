"""Periodic schedules: declarations refused at import, and ticks enqueued once, on a fake clock.

The scheduler runs here in-process against a real database, its clock a
parameter; tests/test_periodic_daemons.py runs it in real supervisors.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import structlog

import errands
from errands.errors import ConfigurationError
from errands.periodic import registered_schedules
from errands.queue.admin import get
from errands.queue.jobs import JobState
from errands.queue.lease import Held, claim, fail
from errands.queue.schedules import Schedule, list_schedules
from errands.queue.ticks import Timing
from errands.workers.execution import Succeeded, execute
from errands.workers.loading import TaskModuleError, load_task_modules
from errands.workers.scheduler import MAX_BEHIND, Scheduler
from tests.test_cli import errands as errands_cli

Conn = psycopg.Connection[Any]
_names = itertools.count()


@errands.task("periodic_test.report", queue="reports", max_attempts=3)
def report(day: str = "") -> str:
    return errands.current_job().run_at.isoformat()


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_names)}"


def half_past() -> datetime:
    """Half a minute past the last tick: no tick falls between it and the declaration."""
    return floor_minute(datetime.now(UTC)) + timedelta(seconds=30)


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def every_minute(name: str, *, catch_up: bool = True, payload: Any = None) -> Schedule:
    return Schedule(name, "periodic_test.report", Timing(every=60), payload or {}, catch_up)


def tick_jobs(conn: Conn, name: str) -> list[tuple[datetime, str, str]]:
    rows = conn.execute(
        "select run_at, idempotency_key, queue from errands_jobs"
        " where idempotency_key like %s order by run_at",
        (f"periodic:{name}:%",),
    ).fetchall()
    return [(run_at, key, queue) for run_at, key, queue in rows]


# -- declarations ---------------------------------------------------------------------------


def test_periodic_stacked_on_a_task_declares_its_schedule() -> None:
    name = unique("nightly")

    @errands.periodic("0 3 * * *", tz="Europe/Berlin", payload={"day": "today"}, name=name)
    @errands.task(unique("periodic_test.nightly"))
    def nightly(day: str) -> str:
        return day

    schedule = registered_schedules()[name]
    assert schedule.timing == Timing("0 3 * * *", tz="Europe/Berlin")
    assert dict(schedule.payload) == {"day": "today"}
    assert schedule.catch_up is True
    assert nightly("x") == "x"  # the task is returned as it was


def test_the_schedule_is_named_after_the_task_by_default() -> None:
    task_name = unique("periodic_test.renamed")

    @errands.periodic(every=timedelta(minutes=5), catch_up=False)
    @errands.task(task_name)
    def function_with_another_name() -> None: ...

    schedule = registered_schedules()[task_name]
    assert (schedule.task, schedule.timing.every, schedule.catch_up) == (task_name, 300, False)


def refused(message: str, declare: Callable[[], object]) -> str:
    with pytest.raises(ConfigurationError) as info:
        declare()
    text = str(info.value)
    assert message in text
    return text


def test_an_invalid_cron_is_refused_naming_the_schedule() -> None:
    text = refused("Bad minute", lambda: errands.periodic("75 * * * *", name="bad_cron")(report))
    assert "periodic schedule 'bad_cron'" in text


def test_an_unknown_time_zone_is_refused_naming_the_schedule() -> None:
    text = refused(
        "unknown time zone 'Mars/Olympus'",
        lambda: errands.periodic("@daily", tz="Mars/Olympus", name="bad_tz")(report),
    )
    assert "periodic schedule 'bad_tz'" in text


def test_periodic_on_a_function_that_is_not_a_registered_task_is_refused() -> None:
    def not_a_task() -> None: ...

    text = refused("not a registered task", lambda: errands.periodic(every=60)(not_a_task))
    assert "periodic schedule 'not_a_task'" in text


def test_periodic_below_the_task_decorator_is_refused() -> None:
    def declare() -> None:
        @errands.task(unique("periodic_test.upside_down"))
        @errands.periodic(every=60)
        def upside_down() -> None: ...

    refused("put @errands.periodic above @errands.task", declare)


@pytest.mark.parametrize(
    ("payload", "message"),
    [([1, 2], "must be a JSON object"), ({"when": datetime(2026, 1, 1)}, "payload")],
)
def test_a_payload_that_is_not_a_json_object_is_refused_naming_the_schedule(
    payload: Any, message: str
) -> None:
    text = refused(message, lambda: errands.periodic(every=60, payload=payload)(report))
    assert "periodic schedule 'periodic_test.report'" in text


@pytest.mark.parametrize(
    ("every", "message"),
    [
        (0.5, "whole number of seconds"),
        (0, "at least 1 second"),
        ("60", "give seconds"),
        (True, "give seconds"),
        (float("inf"), "at most"),
        (float("nan"), "at most"),
        (timedelta(days=365 * 20), "at most"),
    ],
)
def test_an_invalid_interval_is_refused(every: Any, message: str) -> None:
    refused(message, lambda: errands.periodic(every=every, name="bad_every")(report))


def test_two_schedules_with_one_name_are_refused() -> None:
    name = unique("twice")
    errands.periodic(every=60, name=name)(report)
    text = refused("declared twice", lambda: errands.periodic(every=120, name=name)(report))
    assert "give one of them another name=" in text


def test_a_module_declaring_a_bad_schedule_fails_to_import_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = unique("bad_schedule_module")
    (tmp_path / f"{module}.py").write_text(
        "import errands\n\n"
        "@errands.periodic('0 25 * * *', name='daily_digest')\n"
        f"@errands.task('{module}.digest')\n"
        "def digest() -> None: ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskModuleError) as info:
        load_task_modules([module])
    assert f"cannot import task module '{module}'" in str(info.value)
    assert "periodic schedule 'daily_digest': cron '0 25 * * *': Bad hour" in str(info.value)


# -- ticks ----------------------------------------------------------------------------------


def test_schedulers_sharing_a_database_make_one_job_per_tick(conn: Conn) -> None:
    name = unique("shared")
    clock = FakeClock(half_past())
    schedulers = [Scheduler([every_minute(name)], clock) for _ in range(3)]
    for scheduler in schedulers:
        scheduler.start(conn)
    for _ in range(5):
        clock.advance(60)
        for scheduler in schedulers:
            scheduler.enqueue_due(conn)
    jobs = tick_jobs(conn, name)
    start = floor_minute(clock.now) - timedelta(minutes=5)
    assert [run_at for run_at, _, _ in jobs] == [start + timedelta(minutes=n) for n in range(1, 6)]
    assert jobs[0][1] == f"periodic:{name}:{start + timedelta(minutes=1):%Y-%m-%dT%H:%M:%SZ}"
    assert {queue for _, _, queue in jobs} == {"reports"}  # the task's queue


def test_after_downtime_only_the_latest_missed_tick_is_caught_up(conn: Conn) -> None:
    name = unique("caught_up")
    clock = FakeClock(half_past())
    first = Scheduler([every_minute(name)], clock)
    first.start(conn)
    clock.advance(60)
    first.enqueue_due(conn)
    last_before = floor_minute(clock.now)
    clock.advance(5 * 60)  # no scheduler runs across five ticks
    Scheduler([every_minute(name)], clock).start(conn)
    run_ats = [run_at for run_at, _, _ in tick_jobs(conn, name)]
    assert run_ats == [last_before, last_before + timedelta(minutes=5)]


def test_without_catch_up_ticks_missed_during_downtime_are_skipped(conn: Conn) -> None:
    name = unique("no_catch_up")
    clock = FakeClock(half_past())
    first = Scheduler([every_minute(name, catch_up=False)], clock)
    first.start(conn)
    clock.advance(60)
    first.enqueue_due(conn)
    last_before = floor_minute(clock.now)
    clock.advance(5 * 60)
    second = Scheduler([every_minute(name, catch_up=False)], clock)
    second.start(conn)
    assert [run_at for run_at, _, _ in tick_jobs(conn, name)] == [last_before]
    clock.advance(60)
    second.enqueue_due(conn)
    run_ats = [run_at for run_at, _, _ in tick_jobs(conn, name)]
    assert run_ats == [last_before, last_before + timedelta(minutes=6)]


def test_a_new_schedule_does_not_catch_up_ticks_from_before_its_declaration(conn: Conn) -> None:
    name = unique("brand_new")
    Scheduler([every_minute(name)], FakeClock(datetime.now(UTC))).start(conn)
    assert tick_jobs(conn, name) == []


def test_a_scheduler_that_fell_a_few_ticks_behind_enqueues_each_of_them(conn: Conn) -> None:
    name = unique("behind")
    clock = FakeClock(half_past())
    scheduler = Scheduler([every_minute(name)], clock)
    scheduler.start(conn)
    clock.advance(4 * 60)  # a pause, a slow database
    scheduler.enqueue_due(conn)
    start = floor_minute(clock.now) - timedelta(minutes=4)
    run_ats = [run_at for run_at, _, _ in tick_jobs(conn, name)]
    assert run_ats == [start + timedelta(minutes=n) for n in range(1, 5)]


@pytest.mark.parametrize("catch_up", [True, False])
def test_falling_far_behind_counts_as_downtime(conn: Conn, catch_up: bool) -> None:
    name = unique("far_behind")
    clock = FakeClock(half_past())
    scheduler = Scheduler([every_minute(name, catch_up=catch_up)], clock)
    scheduler.start(conn)
    clock.advance((MAX_BEHIND + 20) * 60)
    scheduler.enqueue_due(conn)
    latest = [floor_minute(clock.now)] if catch_up else []
    assert [run_at for run_at, _, _ in tick_jobs(conn, name)] == latest
    clock.advance(60)
    scheduler.enqueue_due(conn)  # and it goes on from there
    assert [run_at for run_at, _, _ in tick_jobs(conn, name)][-1] == floor_minute(clock.now)


def test_a_tick_enqueued_by_another_definition_is_left_alone(conn: Conn) -> None:
    name = unique("redefined")
    clock = FakeClock(half_past())
    old = Scheduler([every_minute(name, payload={"day": "old"})], clock)
    new = Scheduler([every_minute(name, payload={"day": "new"})], clock)
    old.start(conn)
    new.start(conn)
    clock.advance(60)
    with structlog.testing.capture_logs() as logs:
        old.enqueue_due(conn)
        new.enqueue_due(conn)
    assert len(tick_jobs(conn, name)) == 1
    assert any("different definition" in entry["event"] for entry in logs)


def test_one_log_line_per_enqueued_tick(conn: Conn) -> None:
    name = unique("logged")
    clock = FakeClock(half_past())
    schedulers = [Scheduler([every_minute(name)], clock) for _ in range(2)]
    for scheduler in schedulers:
        scheduler.start(conn)
    clock.advance(30.25)
    with structlog.testing.capture_logs() as logs:
        for scheduler in schedulers:
            scheduler.enqueue_due(conn)
    [line] = [entry for entry in logs if entry["event"] == "periodic job enqueued"]
    assert line["schedule"] == name
    assert line["late_seconds"] == 0.25
    assert line["job_id"] == get(conn, line["job_id"]).id  # type: ignore[union-attr]


def test_listing_shows_definition_next_tick_and_last_job(conn: Conn) -> None:
    name = unique("listed")
    clock = FakeClock(half_past())
    scheduler = Scheduler([every_minute(name, payload={"day": "x"})], clock)
    scheduler.start(conn)
    clock.advance(60)
    scheduler.enqueue_due(conn)
    [status] = [s for s in list_schedules(conn) if s.name == name]
    [(tick, _, _)] = tick_jobs(conn, name)
    assert (status.task, status.every, status.cron, status.tz) == (
        "periodic_test.report",
        60,
        None,
        "UTC",
    )
    assert status.payload == {"day": "x"}
    assert status.last_tick == tick
    assert status.last_job_state is JobState.PENDING
    assert status.active
    db_now = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
    assert status.next_tick == Timing(every=60).next_after(db_now)
    assert json.loads(json.dumps(status.to_dict()))["last_job_state"] == "pending"


def test_in_the_task_run_at_is_the_tick_even_on_a_retry(conn: Conn) -> None:
    name = unique("retried")
    clock = FakeClock(floor_minute(datetime.now(UTC)) - timedelta(minutes=5, seconds=30))
    scheduler = Scheduler([every_minute(name)], clock)
    scheduler.start(conn)
    clock.advance(60)
    scheduler.enqueue_due(conn)
    tick = floor_minute(clock.now)
    [job] = claim(conn, "test-worker", ["reports"], 1, 30)
    fail(conn, "test-worker", Held(job.id, job.attempts), "boom", None, retry_in=0)
    [again] = claim(conn, "test-worker", ["reports"], 1, 30)
    assert again.run_at != tick  # the retry was rescheduled
    outcome = execute(again)
    assert isinstance(outcome, Succeeded)
    assert datetime.fromisoformat(json.loads(outcome.result_json)) == tick


# -- seeing them ----------------------------------------------------------------------------


def ticked_once(conn: Conn, name: str) -> datetime:
    clock = FakeClock(half_past())
    scheduler = Scheduler([every_minute(name, payload={"day": "x"})], clock)
    scheduler.start(conn)
    clock.advance(60)
    scheduler.enqueue_due(conn)
    return floor_minute(clock.now)


def test_the_api_lists_schedules_and_exports_when_each_last_enqueued(
    api: httpx.Client, conn: Conn
) -> None:
    name = unique("api_listed")
    tick = ticked_once(conn, name)
    [listed] = [s for s in api.get("/schedules").json()["schedules"] if s["name"] == name]
    assert (listed["every"], listed["last_job_state"]) == (60, "pending")
    assert datetime.fromisoformat(listed["last_tick"]) == tick
    [(created_at,)] = conn.execute(
        "select created_at from errands_jobs where run_at = %s", (tick,)
    ).fetchall()
    metric = f'errands_schedule_last_enqueued_timestamp_seconds{{schedule="{name}"}}'
    [line] = [line for line in api.get("/metrics").text.splitlines() if line.startswith(metric)]
    assert float(line.split()[-1]) == pytest.approx(created_at.timestamp())


def test_the_api_refuses_query_parameters_on_schedules(api: httpx.Client) -> None:
    response = api.get("/schedules", params={"name": "x"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "name"


def test_errands_schedules_shows_each_schedule_for_people_and_machines(
    db_url: str, conn: Conn
) -> None:
    name = unique("cli_listed")
    tick = ticked_once(conn, name)
    text = errands_cli(db_url, "schedules").stdout
    [line] = [line for line in text.splitlines() if line.startswith(name)]
    assert "every 60s" in line and f"{tick:%Y-%m-%dT%H:%M:%SZ}" in line and "pending" in line
    [listed] = json.loads(errands_cli(db_url, "schedules", "--json").stdout)
    assert (listed["name"], listed["last_job_state"]) == (name, "pending")
