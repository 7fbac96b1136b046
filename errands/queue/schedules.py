"""Periodic schedules in the database: their ticks as jobs, and what they last enqueued.

A tick becomes an ordinary job whose idempotency key names the schedule and the
tick, so the unique constraint on that key makes one job per tick however many
schedulers enqueue it. `errands_schedules` only records definitions and the
last tick, for people and dashboards: it decides nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from errands.limits import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE
from errands.queue.jobs import JobState
from errands.queue.queries import query
from errands.queue.requests import JobRequest
from errands.queue.submit import Enqueued, enqueue
from errands.queue.ticks import InvalidTiming, Timing, tick_key

# A schedule no running scheduler has declared for this long is shown as inactive.
SEEN_EVERY_SECONDS = 60.0
INACTIVE_AFTER_SECONDS = 3 * SEEN_EVERY_SECONDS


@dataclass(frozen=True)
class Schedule:
    """A declared schedule: which task to enqueue, with what payload, on which clock."""

    name: str
    task: str
    timing: Timing
    payload: Mapping[str, Any] = field(default_factory=dict)
    catch_up: bool = True


@dataclass(frozen=True)
class Declared:
    """What the database remembers of a schedule when a scheduler declares it."""

    declared_at: datetime  # when it was first declared: no tick before is caught up
    last_tick: datetime | None


def declare(conn: psycopg.Connection[Any], schedule: Schedule) -> Declared:
    """Record the schedule's definition (the latest declared wins)."""
    timing = schedule.timing
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            query("declare_schedule"),
            {
                "name": schedule.name,
                "task": schedule.task,
                "cron": timing.cron,
                "every_seconds": timing.every,
                "tz": timing.tz,
                "payload": json.dumps(schedule.payload),
                "catch_up": schedule.catch_up,
            },
        ).fetchone()
    assert row is not None
    return Declared(row["declared_at"], row["last_tick"])


def mark_seen(conn: psycopg.Connection[Any], names: list[str]) -> None:
    conn.execute(query("schedules_seen"), {"names": names})


def enqueue_tick(
    conn: psycopg.Connection[Any],
    schedule: Schedule,
    tick: datetime,
    *,
    queue: str = DEFAULT_QUEUE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Enqueued:
    """Enqueue the tick's job (run_at = the tick), or find the one already enqueued.

    The job and the schedule's record change in one transaction. Raises
    IdempotencyConflict when the tick's job was enqueued by a different
    definition (another release, during a rolling deploy).
    """
    request = JobRequest(
        task=schedule.task,
        payload=dict(schedule.payload),
        queue=queue,
        run_at=tick,
        max_attempts=max_attempts,
        idempotency_key=tick_key(schedule.name, tick),
    )
    with conn.transaction():
        enqueued = enqueue(conn, request)
        conn.execute(
            query("record_tick"),
            {
                "name": schedule.name,
                "tick": tick,
                "job_id": enqueued.job.id,
                "enqueued_at": enqueued.job.created_at,
            },
        )
    return enqueued


@dataclass(frozen=True)
class ScheduleStatus:
    """A schedule as `errands schedules`, GET /schedules and the dashboard show it."""

    name: str
    task: str
    cron: str | None
    every: int | None
    tz: str
    payload: dict[str, Any]
    catch_up: bool
    next_tick: datetime | None  # None: the stored definition cannot be evaluated here
    last_tick: datetime | None
    last_job_id: int | None
    last_job_state: JobState | None  # None: no tick yet, or its job was pruned
    last_enqueued_at: datetime | None
    declared_at: datetime
    seen_at: datetime
    active: bool  # a running scheduler declared it lately

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps in RFC 3339 with their offset."""
        data: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name, value in data.items():
            if isinstance(value, datetime):
                data[name] = value.isoformat()
        data["last_job_state"] = self.last_job_state.value if self.last_job_state else None
        return data


def list_schedules(conn: psycopg.Connection[Any]) -> list[ScheduleStatus]:
    """Every recorded schedule, by name, with its next tick from the database's clock."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("list_schedules")).fetchall()
    return [_status(row) for row in rows]


def _status(row: dict[str, Any]) -> ScheduleStatus:
    try:
        next_tick = Timing(row["cron"], row["every_seconds"], row["tz"]).next_after(row["now"])
    except InvalidTiming:  # e.g. a time zone this host's tz database does not know
        next_tick = None
    silent = (row["now"] - row["seen_at"]).total_seconds()
    return ScheduleStatus(
        name=row["name"],
        task=row["task"],
        cron=row["cron"],
        every=row["every_seconds"],
        tz=row["tz"],
        payload=row["payload"],
        catch_up=row["catch_up"],
        next_tick=next_tick,
        last_tick=row["last_tick"],
        last_job_id=row["last_job_id"],
        last_job_state=JobState(row["last_job_state"]) if row["last_job_state"] else None,
        last_enqueued_at=row["last_enqueued_at"],
        declared_at=row["declared_at"],
        seen_at=row["seen_at"],
        active=silent <= INACTIVE_AFTER_SECONDS,
    )
