"""Reading and managing jobs: get, list, stats, manual retry and cancel, pruning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from errands.errors import InvalidState, JobNotFound
from errands.limits import MAX_LIST_LIMIT
from errands.queue.jobs import Job, JobState
from errands.queue.presence import WorkerInfo, live_workers
from errands.queue.queries import query
from errands.queue.throttles import forget_idle_counters

PRUNE_BATCH = 5000


@dataclass(frozen=True)
class QueueCounts:
    """Jobs per state for one queue."""

    queue: str
    counts: dict[JobState, int]


def get(conn: psycopg.Connection[Any], job_id: int) -> Job | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query("get"), {"id": job_id}).fetchone()
    return Job.from_row(row) if row else None


def list_jobs(
    conn: psycopg.Connection[Any],
    *,
    state: JobState | str | None = None,
    queue: str | None = None,
    task: str | None = None,
    limit: int = 100,
    after: int | None = None,
) -> list[Job]:
    """Jobs newest first; pass the last id of a page as `after` to get the next."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
    params = {
        "state": JobState(state).value if state is not None else None,
        "queue": queue,
        "task": task,
        "after": after,
        "limit": limit,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        return [Job.from_row(row) for row in cur.execute(query("list"), params)]


def retry(conn: psycopg.Connection[Any], job_id: int) -> Job:
    """Run a dead or cancelled job again, with a fresh attempt budget."""
    return _manage(conn, "retry", job_id)


def cancel(conn: psycopg.Connection[Any], job_id: int) -> Job:
    """Cancel a job that has not started (pending, or failed and waiting to retry)."""
    return _manage(conn, "cancel", job_id)


def _manage(conn: psycopg.Connection[Any], action: str, job_id: int) -> Job:
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(query(action), {"id": job_id}).fetchone()
    except psycopg.errors.UniqueViolation:  # its unique key came live since the check
        row = None
    if row:
        return Job.from_row(row)
    current = get(conn, job_id)
    if current is None:
        raise JobNotFound(job_id)
    holder = (
        current.unique_key
        and conn.execute(query("live_holder"), {"key": current.unique_key, "id": job_id}).fetchone()
    )
    if holder:
        reason = f"job {holder[0]}, {holder[1]}, holds its unique key {current.unique_key!r}"
        raise InvalidState(job_id, action, current.state.value, reason)
    raise InvalidState(job_id, action, current.state.value)


@dataclass(frozen=True)
class Stats:
    queues: list[QueueCounts]
    workers: list[WorkerInfo]
    paused: list[str]  # queues whose jobs are not claimed until they are resumed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as the CLI and the HTTP API show it."""
        return {
            "queues": {q.queue: {s.value: n for s, n in q.counts.items()} for q in self.queues},
            "paused_queues": self.paused,
            "workers": [
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "queues": w.queues,
                    "concurrency": w.concurrency,
                    "started_at": w.started_at.isoformat(),
                    "heartbeat_at": w.heartbeat_at.isoformat(),
                }
                for w in self.workers
            ],
        }


def stats(conn: psycopg.Connection[Any], worker_silence_seconds: float) -> Stats:
    """Jobs per queue and state, and the workers heard from within `worker_silence_seconds`."""
    paused = [name for name, paused in conn.execute(query("queue_settings")) if paused]
    return Stats(job_counts(conn), live_workers(conn, worker_silence_seconds), sorted(paused))


def job_counts(conn: psycopg.Connection[Any]) -> list[QueueCounts]:
    """Jobs per queue and state; finished rows are never counted one by one."""
    counts: dict[str, dict[JobState, int]] = {}
    for queue, state, jobs in conn.execute(query("stats")):
        per_state = counts.setdefault(queue, dict.fromkeys(JobState, 0))
        per_state[JobState(state)] += int(jobs)
    return [QueueCounts(queue, counts[queue]) for queue in sorted(counts)]


def oldest_pending_seconds(conn: psycopg.Connection[Any]) -> dict[str, float]:
    """Per queue, how long the oldest due job has waited."""
    return {queue: seconds for queue, seconds in conn.execute(query("oldest_pending"))}


def prune(conn: psycopg.Connection[Any], retention_seconds: float, batch: int = PRUNE_BATCH) -> int:
    """Delete jobs finished longer ago than the retention, in bounded batches; returns how many."""
    # The dashboard's per-minute counts go with the jobs they counted, and the counters of
    # limit keys unused as long with them (a claim makes one again when it needs it).
    conn.execute(query("prune_throughput"), {"retention_seconds": retention_seconds})
    forget_idle_counters(conn, retention_seconds)
    deleted = 0
    while True:
        with conn.transaction():
            cur = conn.execute(
                query("prune"), {"retention_seconds": retention_seconds, "batch": batch}
            )
        deleted += cur.rowcount
        if cur.rowcount < batch:
            return deleted
