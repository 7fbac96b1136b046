"""Reading and managing jobs: get, list, stats, manual retry and cancel, pruning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from errands.errors import InvalidState, JobNotFound
from errands.limits import MAX_LIST_LIMIT
from errands.queue.jobs import Job, JobState
from errands.queue.presence import WorkerInfo, live_workers_steps
from errands.queue.queries import query
from errands.queue.steps import Atomic, Execute, Operation, run
from errands.queue.throttles import forget_idle_counters

PRUNE_BATCH = 5000


@dataclass(frozen=True)
class QueueCounts:
    """Jobs per state for one queue."""

    queue: str
    counts: dict[JobState, int]


def get(conn: psycopg.Connection[Any], job_id: int) -> Job | None:
    return run(conn, get_steps(job_id))


def get_steps(job_id: int) -> Operation[Job | None]:
    rows = yield Execute(query("get"), {"id": job_id}, dicts=True)
    return Job.from_row(rows[0]) if rows else None


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
    return run(conn, list_steps(state=state, queue=queue, task=task, limit=limit, after=after))


def list_steps(
    *,
    state: JobState | str | None = None,
    queue: str | None = None,
    task: str | None = None,
    limit: int = 100,
    after: int | None = None,
) -> Operation[list[Job]]:
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
    params = {
        "state": JobState(state).value if state is not None else None,
        "queue": queue,
        "task": task,
        "after": after,
        "limit": limit,
    }
    rows = yield Execute(query("list"), params, dicts=True)
    return [Job.from_row(row) for row in rows]


def retry(conn: psycopg.Connection[Any], job_id: int) -> Job:
    """Run a dead or cancelled job again, with a fresh attempt budget."""
    return run(conn, manage_steps("retry", job_id))


def cancel(conn: psycopg.Connection[Any], job_id: int) -> Job:
    """Cancel a job that has not started (pending, or failed and waiting to retry), or ask
    a running one to stop: it stays in_progress, `cancel_requested_at` set, until its
    attempt ends, and is then recorded cancelled whatever the attempt's outcome."""
    return run(conn, manage_steps("cancel", job_id))


# The states each action applies to, as its statement allows them.
ACTION_STATES = {
    "retry": frozenset({JobState.DEAD, JobState.CANCELLED}),
    "cancel": frozenset(
        {JobState.WAITING, JobState.PENDING, JobState.FAILED, JobState.IN_PROGRESS}
    ),
}
# A job that changed state under the statement (claimed as it was being cancelled) is
# read and tried again, this many times at most.
_TRIES = 3


def manage_steps(action: str, job_id: int) -> Operation[Job]:
    """`retry` or `cancel`, as steps: the job changed, else JobNotFound or InvalidState (naming
    the live job that holds a retried job's unique key, when one does)."""
    tries = 0
    while True:
        rows = yield from _act(action, job_id)
        if rows:
            return Job.from_row(rows[0])
        current = yield from get_steps(job_id)
        if current is None:
            raise JobNotFound(job_id)
        if current.unique_key is not None and action == "retry":
            holder = yield Execute(query("live_holder"), {"key": current.unique_key, "id": job_id})
            if holder:
                reason = (
                    f"job {holder[0][0]}, {holder[0][1]}, holds its unique key "
                    f"{current.unique_key!r}"
                )
                raise InvalidState(job_id, action, current.state.value, reason)
        tries += 1
        if current.state not in ACTION_STATES[action] or tries == _TRIES:
            raise InvalidState(job_id, action, current.state.value)


def _act(action: str, job_id: int) -> Operation[list[dict[str, Any]]]:
    """The action's statement. A retry runs in a savepoint: the job's unique key may have come
    live since the statement checked it, and the constraint then refuses the row (no rows)."""
    statement = Execute(query(action), {"id": job_id}, dicts=True)
    rows: list[dict[str, Any]]
    if action != "retry":
        rows = yield statement
        return rows
    try:
        rows = yield Atomic(_alone(statement))
    except psycopg.errors.UniqueViolation:
        rows = []
    return rows


def _alone(statement: Execute) -> Operation[Any]:
    return (yield statement)


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
    return run(conn, stats_steps(worker_silence_seconds))


def stats_steps(worker_silence_seconds: float) -> Operation[Stats]:
    settings = yield Execute(query("queue_settings"))
    counts = yield from job_counts_steps()
    workers = yield from live_workers_steps(worker_silence_seconds)
    return Stats(counts, workers, sorted(name for name, paused in settings if paused))


def job_counts(conn: psycopg.Connection[Any]) -> list[QueueCounts]:
    """Jobs per queue and state; finished rows are never counted one by one."""
    return run(conn, job_counts_steps())


def job_counts_steps() -> Operation[list[QueueCounts]]:
    counts: dict[str, dict[JobState, int]] = {}
    for queue, state, jobs in (yield Execute(query("stats"))):
        per_state = counts.setdefault(queue, dict.fromkeys(JobState, 0))
        per_state[JobState(state)] += int(jobs)
    return [QueueCounts(queue, counts[queue]) for queue in sorted(counts)]


def workflow_steps(workflow_id: int) -> Operation[list[Job]]:
    """The jobs of a workflow in id order, parents before children; [] when none is stored."""
    rows = yield Execute(query("workflow_jobs"), {"workflow_id": workflow_id}, dicts=True)
    return [Job.from_row(row) for row in rows]


def parent_results_steps(ids: Sequence[int]) -> Operation[dict[int, Any]]:
    """The result of each of these jobs still stored, by id, in the order given."""
    rows = yield Execute(query("parent_results"), {"ids": list(ids)})
    results = dict(rows)
    return {job_id: results[job_id] for job_id in ids if job_id in results}


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
