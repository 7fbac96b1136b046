"""Queue control and what an operator's dashboard reads: pause and resume, queue limits,
queues with their counts and limits, throughput per minute, jobs held per worker, bulk actions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from errands.errors import FieldError, InvalidJob
from errands.queue.admin import job_counts
from errands.queue.jobs import Job, JobState
from errands.queue.queries import query
from errands.queue.requests import QUEUE_NAME, QueueLimits
from errands.queue.throttles import by_queue, limits, set_queue_limits, throttled

BULK_BATCH = 1000
BulkAction = Literal["retry", "cancel"]

# The states each action applies to, as the single-job statements allow them. A bulk
# cancel asks running jobs to stop only when told to (Filter.running).
BULK_STATES: dict[BulkAction, tuple[JobState, ...]] = {
    "retry": (JobState.DEAD, JobState.CANCELLED),
    "cancel": (JobState.WAITING, JobState.PENDING, JobState.FAILED),
}


@dataclass(frozen=True)
class QueueInfo:
    name: str
    paused: bool
    counts: dict[JobState, int]
    concurrency: int | None = None  # its limit: jobs in progress at once, across every host
    concurrency_in_use: int | None = None  # slots its running jobs hold
    rate: str | None = None  # its limit: starts per period, e.g. "20/s"
    rate_in_use: int | None = None  # starts within the last period
    throttled: int = 0  # due jobs a full limit holds back (the queue's or their task's)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paused": self.paused,
            "counts": {s.value: n for s, n in self.counts.items()},
            "concurrency": self.concurrency,
            "concurrency_in_use": self.concurrency_in_use,
            "rate": self.rate,
            "rate_in_use": self.rate_in_use,
            "throttled": self.throttled,
        }


@dataclass(frozen=True)
class Filter:
    """The jobs a bulk action applies to: every field None means any. `running`: a
    cancel also asks the running jobs that match to stop."""

    state: JobState | None = None
    queue: str | None = None
    task: str | None = None
    running: bool = False

    def states(self, action: BulkAction) -> list[JobState]:
        allowed = BULK_STATES[action]
        if action == "cancel" and self.running:
            allowed = (*allowed, JobState.IN_PROGRESS)
        return [s for s in allowed if self.state in (None, s)]


def check_queue_name(name: str) -> str:
    """`name` when it is a valid queue name; else InvalidJob naming the field `name`."""
    if not QUEUE_NAME.fullmatch(name):
        raise InvalidJob([FieldError("name", f"must match {QUEUE_NAME.pattern}")])
    return name


def pause(conn: psycopg.Connection[Any], name: str) -> QueueInfo:
    """Stop claims from queue `name`: its jobs stay pending until it is resumed."""
    conn.execute(query("pause_queue"), {"name": check_queue_name(name)})
    return _one(conn, name)


def resume(conn: psycopg.Connection[Any], name: str) -> QueueInfo:
    """Let workers claim from queue `name` again, waking idle ones at once."""
    conn.execute(query("resume_queue"), {"name": check_queue_name(name)})
    return _one(conn, name)


def set_limits(conn: psycopg.Connection[Any], name: str, changes: QueueLimits) -> QueueInfo:
    """Set or remove queue `name`'s concurrency and rate limits (docs/guides/limits.md)."""
    set_queue_limits(conn, check_queue_name(name), changes.changes())
    return _one(conn, name)


def queues(conn: psycopg.Connection[Any]) -> list[QueueInfo]:
    """Every queue that holds jobs, was ever paused or has a limit: its counts by state, its
    limits and their use, and the jobs held back."""
    paused = dict(conn.execute(query("queue_settings")).fetchall())
    counts = {q.queue: q.counts for q in job_counts(conn)}
    limited = by_queue(limits(conn))
    held = throttled(conn)
    infos = []
    for name in sorted(counts.keys() | paused.keys() | limited.keys() | held.keys()):
        concurrency, rate = (limited.get(name, {}).get(kind) for kind in ("concurrency", "rate"))
        infos.append(
            QueueInfo(
                name,
                paused.get(name, False),
                counts.get(name, dict.fromkeys(JobState, 0)),
                concurrency=concurrency.amount if concurrency else None,
                concurrency_in_use=concurrency.in_use if concurrency else None,
                rate=str(rate.value) if rate else None,
                rate_in_use=rate.in_use if rate else None,
                throttled=held.get(name, 0),
            )
        )
    return infos


def _one(conn: psycopg.Connection[Any], name: str) -> QueueInfo:
    """The queue as listed, or as a queue with nothing in it (a limit just removed, no job)."""
    found = next((q for q in queues(conn) if q.name == name), None)
    return found or QueueInfo(name, False, dict.fromkeys(JobState, 0))


def throughput(conn: psycopg.Connection[Any], since: datetime) -> list[tuple[datetime, str, int]]:
    """(minute, state, jobs) for each minute since `since` in which jobs finished or failed."""
    return [
        (minute, state, int(jobs))
        for minute, state, jobs in conn.execute(query("throughput"), {"since": since})
    ]


def held_by_worker(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """How many jobs each lease owner holds now."""
    return {owner: int(n) for owner, n in conn.execute(query("held_by_worker"))}


def find_by_key(conn: psycopg.Connection[Any], key: str) -> Job | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query("find_by_key"), {"key": key}).fetchone()
    return Job.from_row(row) if row else None


def count_matching(
    conn: psycopg.Connection[Any], action: BulkAction, where: Filter, cap: int
) -> int:
    """Jobs `action` would apply to now, counting no further than `cap`."""
    total = 0
    for state in where.states(action):
        row = conn.execute(
            query(_statement("count_matching", "count_running_to_cancel", state)),
            {**_params(where, state), "cap": cap},
        ).fetchone()
        total += int(row[0]) if row else 0
    return min(total, cap)


def bulk(conn: psycopg.Connection[Any], action: BulkAction, where: Filter) -> int:
    """Apply `action` to every job matching `where` in batches; returns how many changed."""
    done = 0
    for state in where.states(action):
        while True:
            try:
                with conn.transaction():
                    row = conn.execute(
                        query(_statement(f"bulk_{action}", "bulk_cancel_running", state)),
                        {**_params(where, state), "batch": BULK_BATCH},
                    ).fetchone()
            except psycopg.errors.UniqueViolation:
                continue  # a unique key came live since the batch looked: it looks again
            changed = int(row[0]) if row else 0
            done += changed
            if changed == 0:
                break
    return done


def _statement(name: str, for_running: str, state: JobState) -> str:
    """Running jobs are asked to stop (a statement of their own), not cancelled at once."""
    return for_running if state is JobState.IN_PROGRESS else name


def _params(where: Filter, state: JobState) -> dict[str, Any]:
    return {"state": state.value, "queue": where.queue, "task": where.task}
