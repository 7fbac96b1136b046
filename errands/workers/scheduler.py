"""The scheduler child: enqueues the ticks of the periodic schedules the task modules declare.

Every supervisor forks one, as it forks workers: the task modules, where the
schedules are declared, are user code and are imported here, never in the
supervisor, so a broken module costs a child restart, not the daemon. Any number
of schedulers may run against one database: a tick's job carries the idempotency
key `periodic:<name>:<tick>`, so the first enqueue creates it and the others find
it (docs/explanation/periodic.md).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any

import psycopg

from errands import tracing
from errands.database import connect_retrying, pooling_options
from errands.errors import IdempotencyConflict
from errands.log import get_logger
from errands.periodic import registered_schedules
from errands.queue.schedules import SEEN_EVERY_SECONDS, Schedule, declare, enqueue_tick, mark_seen
from errands.queue.ticks import rfc3339
from errands.registry import registered
from errands.workers.loading import load_task_modules

Clock = Callable[[], datetime]
MAX_RETRY_SECONDS = 5.0
EXIT_NOTHING_TO_SCHEDULE = 6  # the task modules declare no schedule: not restarted
MAX_BEHIND = 10  # ticks a running scheduler enqueues one by one after falling behind

_log = get_logger("errands.scheduler")


class DatabaseClock:
    """PostgreSQL's time, the clock every host shares: ticks fall due by it, never by the
    host's own clock, which may be off by minutes (docs: Dead peers, partitions and
    clocks). Read on the scheduler's connection, one round trip per wake-up."""

    def __init__(self) -> None:
        self.conn: psycopg.Connection[Any] | None = None

    def __call__(self) -> datetime:
        assert self.conn is not None, "read only while connected"
        row = self.conn.execute("select clock_timestamp()").fetchone()
        assert row is not None
        moment: datetime = row[0]
        return moment


@dataclass(frozen=True)
class SchedulerOptions:
    url: str
    task_modules: Sequence[str] = ()
    pgbouncer: bool = False  # through a transaction pooler: no prepared statements


class Scheduler:
    """Which ticks are due and their enqueueing, on a clock tests can drive without sleeping."""

    def __init__(self, schedules: Sequence[Schedule], clock: Clock) -> None:
        self.schedules = sorted(schedules, key=lambda s: s.name)
        self._clock = clock
        self._next: dict[str, datetime] = {}

    def start(self, conn: psycopg.Connection[Any]) -> None:
        """Declare the schedules; with catch_up, enqueue the latest tick missed while none ran.

        Ticks before a schedule was first declared, or at or before its last
        recorded tick, were not missed.
        """
        now = self._clock()
        for schedule in self.schedules:
            declared = declare(conn, schedule)
            missed = schedule.timing.latest_at_or_before(now)
            since = declared.last_tick or declared.declared_at
            if schedule.catch_up and missed is not None and missed > since:
                self._enqueue(conn, schedule, missed, now, catching_up=True)
            self._next[schedule.name] = schedule.timing.next_after(now)
        _log.info(
            "scheduler started",
            now=rfc3339(now),
            schedules={s.name: s.timing.describe() for s in self.schedules},
        )

    def next_due(self) -> datetime:
        return min(self._next.values())

    def enqueue_due(self, conn: psycopg.Connection[Any]) -> None:
        """Enqueue the ticks that came due, in order.

        A scheduler that fell behind (a pause, a slow database) enqueues each
        tick it missed; more than MAX_BEHIND of them count as downtime: the
        latest only with catch_up, else none.
        """
        now = self._clock()
        for schedule in self.schedules:
            due = self._due(schedule, now)
            for tick in due:
                self._enqueue(conn, schedule, tick, now, catching_up=False)
            if self._next[schedule.name] <= now:
                self._next[schedule.name] = schedule.timing.next_after(now)

    def _due(self, schedule: Schedule, now: datetime) -> list[datetime]:
        due: list[datetime] = []
        tick = self._next[schedule.name]
        while tick <= now:
            if len(due) == MAX_BEHIND:
                latest = schedule.timing.latest_at_or_before(now)
                return [latest] if schedule.catch_up and latest is not None else []
            due.append(tick)
            tick = schedule.timing.next_after(tick)
        return due

    def _enqueue(
        self,
        conn: psycopg.Connection[Any],
        schedule: Schedule,
        tick: datetime,
        now: datetime,
        *,
        catching_up: bool,
    ) -> None:
        task = registered(schedule.task)
        assert task is not None  # @periodic refuses unregistered tasks
        try:
            with tracing.tick(schedule.name, rfc3339(tick)):  # the job's trace: a new one
                enqueued = enqueue_tick(
                    conn, schedule, tick, queue=task.queue, max_attempts=task.max_attempts
                )
        except IdempotencyConflict as exc:
            _log.warning(
                "the tick's job was enqueued by a different definition of the schedule "
                "(another release?); left as it is",
                schedule=schedule.name,
                tick=rfc3339(tick),
                job_id=exc.job_id,
            )
            return
        if enqueued.created:
            _log.info(
                "periodic job enqueued",
                schedule=schedule.name,
                tick=rfc3339(tick),
                job_id=enqueued.job.id,
                task=schedule.task,
                catch_up=catching_up,
                late_seconds=round((now - tick).total_seconds(), 3),
            )


def run_scheduler(options: SchedulerOptions) -> int:
    """The child's main: import the task modules, then tick until SIGTERM."""
    load_task_modules(options.task_modules)
    schedules = list(registered_schedules().values())
    if not schedules:
        return EXIT_NOTHING_TO_SCHEDULE
    stop = _StopSignal()
    clock = DatabaseClock()
    scheduler = Scheduler(schedules, clock)
    conn: psycopg.Connection[Any] | None = None
    started = False
    seen_due = 0.0
    retry = 0.05
    while not stop.requested:
        try:
            conn = conn or connect_retrying(
                options.url, give_up=lambda: stop.requested, **pooling_options(options.pgbouncer)
            )
            if conn is None:
                break
            clock.conn = conn
            if not started:
                scheduler.start(conn)
                started, seen_due = True, time.monotonic() + SEEN_EVERY_SECONDS
            scheduler.enqueue_due(conn)
            if time.monotonic() >= seen_due:
                mark_seen(conn, [s.name for s in schedules])
                seen_due = time.monotonic() + SEEN_EVERY_SECONDS
            retry = 0.05
            wait = (scheduler.next_due() - clock()).total_seconds()
            stop.wait(max(0.0, min(wait, seen_due - time.monotonic())))
        except psycopg.OperationalError as exc:
            # Due ticks stay due: they are enqueued once the database answers again.
            _log.warning("database unavailable; will retry", error=str(exc), retry_in=retry)
            if conn is not None:
                conn.close()
            conn = None
            stop.wait(retry)
            retry = min(retry * 2, MAX_RETRY_SECONDS)
    if conn is not None:
        conn.close()
    return 0


class _StopSignal:
    """SIGTERM, as something to sleep on: a wait ends at the timeout or the signal."""

    def __init__(self) -> None:
        self.requested = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._w, b"\0")

    def wait(self, seconds: float) -> None:
        if not self.requested:
            select.select([self._r], [], [], seconds)
