"""The lease protocol: claim, heartbeat, finish, and recovery of lost jobs.

Each function is one statement, so one round trip. Heartbeat, completion and
failure are fenced: they match the job's id, its attempt number, the lease
owner and `in_progress`, so a worker whose lease was taken away (a zombie after
a long pause, a partition) changes nothing, and learns it from the answer.
A job asked to cancel while it ran ends `cancelled` whichever of them ends its
attempt (a trigger decides: migration 0011), and their answers say so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import dict_row

from errands.queue.jobs import Job, JobState
from errands.queue.queries import query
from errands.queue.steps import Execute, Operation

# Any constant unique to errands: one reaper at a time across every host.
_REAPER_LOCK = 0x6572_7261_6E64_0002

LEASE_EXPIRED = "lease expired (worker or host lost)"
WORKER_EXITED = "worker process exited while running the job"


@dataclass(frozen=True)
class Held:
    """A job a worker believes it holds: enough to fence any write about it."""

    id: int
    attempts: int


@dataclass(frozen=True)
class Completion:
    id: int
    attempts: int
    result_json: str
    progress_json: str | None = None  # the last progress reported, when not stored yet


@dataclass(frozen=True)
class Completed:
    """What a batch of completions did: the ids written (the others' leases were lost),
    and among them those recorded cancelled, a cancel having been requested meanwhile."""

    ids: set[int]
    cancelled: set[int]


@dataclass(frozen=True)
class Renewal:
    """What a heartbeat learnt about the attempts it renewed."""

    held: set[int]  # still held; the others were lost
    renewed: set[int]  # among them, renewed: the rest were locked by another transaction
    cancel_requested: set[int]  # among them, those asked to cancel


@dataclass(frozen=True)
class HandOver:
    """What complete_in's statement found: the completion written in the caller's
    transaction (`completed`), a cancel requested before it, or the lease lost."""

    completed: bool
    cancel_requested: bool
    xact: str  # the caller's transaction id (xid8 as text), for pg_xact_status


@dataclass(frozen=True)
class Fate:
    """What became of an attempt's completion written in an application's transaction."""

    id: int
    fate: str | None  # pg_xact_status: committed, aborted, in progress; None: too old
    running: bool  # the job still in progress under the attempt, as the statement saw it

    @property
    def settled(self) -> bool:
        """The transaction has ended."""
        return self.fate != "in progress"

    @property
    def completed(self) -> bool:
        """Known completed: committed, and the job no longer runs (else the fenced write
        of the attempt's outcome tells)."""
        return self.fate == "committed" and not self.running


@dataclass(frozen=True)
class AsyncSlots:
    """Coroutine slots a claim may fill: jobs of `tasks` (the `async def` ones), up to `free`."""

    tasks: Sequence[str] = ()
    free: int = 0

    @property
    def limit(self) -> int:
        """Coroutine jobs a claim may take: none without `async def` tasks to take."""
        return max(0, self.free) if self.tasks else 0


NO_ASYNC_SLOTS = AsyncSlots()


@dataclass(frozen=True)
class Recovered:
    """A job taken back from a lost worker."""

    id: int
    queue: str
    task: str
    state: JobState  # pending; dead when its budget was spent; cancelled when asked to
    attempts: int


class Claimed(NamedTuple):
    """What one complete_and_claim statement did."""

    completed: Completed
    jobs: list[Job]  # claimed, best first
    # When a claim may find jobs a limit holds back now: 0 at once (e.g. a key met for the
    # first time got its counter), else a rate's next free start; None: when one frees a slot.
    recheck_seconds: float | None
    # Among the jobs claimed, those other jobs wait for: their completion hands over to
    # children, so it is worth sending at once.
    awaited: set[int]


def claim(
    conn: psycopg.Connection[Any],
    owner: str,
    queues: Sequence[str],
    limit: int,
    lease_seconds: float,
    async_slots: AsyncSlots = NO_ASYNC_SLOTS,
) -> list[Job]:
    """Take due jobs from `queues` for `owner`, best first: up to `limit` for threads and
    up to `async_slots.free` of the `async def` tasks, so none is held without a slot."""
    return complete_and_claim(conn, owner, (), queues, limit, lease_seconds, async_slots).jobs


def complete(conn: psycopg.Connection[Any], owner: str, done: Sequence[Completion]) -> set[int]:
    """Store the results of finished jobs; returns the ids written (cancelled ones among
    them, a cancel having been requested meanwhile); the others' leases were lost."""
    if not done:
        return set()
    return complete_and_claim(conn, owner, done, (), 0, 0).completed.ids


def complete_and_claim(
    conn: psycopg.Connection[Any],
    owner: str,
    done: Sequence[Completion],
    queues: Sequence[str],
    limit: int,
    lease_seconds: float,
    async_slots: AsyncSlots = NO_ASYNC_SLOTS,
) -> Claimed:
    """Acknowledge finished jobs and claim the next ones in one statement.

    One statement is one round trip and one commit for both; each part is
    fenced on its own. Limits (docs/guides/limits.md) hold jobs back
    in the statement itself. The answer says which jobs claimed other jobs
    wait for (docs/guides/workflows.md).
    """
    params = {
        "owner": owner,
        "ids": [d.id for d in done],
        "attempts": [d.attempts for d in done],
        "results": [d.result_json for d in done],
        "progress": [d.progress_json for d in done],
        "queues": list(queues),
        "limit": max(0, limit),
        "async_tasks": list(async_slots.tasks),
        "async_limit": async_slots.limit,
        "lease_seconds": lease_seconds,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("complete_and_claim"), params).fetchall()
    claimed = [Job.from_row(row) for row in rows if row["id"] is not None]
    claimed.sort(key=lambda job: (-job.priority, job.run_at, job.id))
    outcome = next(row for row in rows if row["completed_ids"] is not None)  # one row says
    recheck = outcome["recheck_seconds"]
    return Claimed(
        Completed(set(outcome["completed_ids"]), set(outcome["cancelled_ids"])),
        claimed,
        None if recheck is None else float(recheck),
        set(outcome["awaited_ids"]),
    )


def heartbeat(
    conn: psycopg.Connection[Any],
    owner: str,
    held: Iterable[Held],
    lease_seconds: float,
    progress: Mapping[int, str] | None = None,
) -> Renewal:
    """Renew the leases of `held`, storing the `progress` (JSON, by job id) reported since.

    Never waits for a row another transaction has locked: such an attempt is
    held but not renewed.
    """
    held = list(held)
    if not held:
        return Renewal(set(), set(), set())
    reported = progress or {}
    rows = conn.execute(
        query("heartbeat"),
        {
            "owner": owner,
            "ids": [h.id for h in held],
            "attempts": [h.attempts for h in held],
            "progress": [reported.get(h.id) for h in held],
            "lease_seconds": lease_seconds,
        },
    ).fetchall()
    return Renewal(
        held={job_id for job_id, _, _ in rows},
        renewed={job_id for job_id, _, renewed in rows if renewed},
        cancel_requested={job_id for job_id, cancel, _ in rows if cancel},
    )


def cancel_requests(conn: psycopg.Connection[Any], owner: str, held: Iterable[Held]) -> set[int]:
    """Which of the attempts `held` have been asked to cancel."""
    held = list(held)
    if not held:
        return set()
    params = {"owner": owner, "ids": [h.id for h in held], "attempts": [h.attempts for h in held]}
    return {row[0] for row in conn.execute(query("cancel_requests"), params)}


def complete_in_steps(
    owner: str, held: Held, result_json: str, progress: str | None
) -> Operation[HandOver]:
    """Complete the job inside the transaction under way on the connection that runs these
    steps (current_job().complete_in), fenced: a sync or an async one alike."""
    params = {
        "owner": owner,
        "id": held.id,
        "attempts": held.attempts,
        "result": result_json,
        "progress": progress,
    }
    # Never prepared: the connection is the application's, perhaps through a pooler that
    # does not keep prepared statements apart (README: PgBouncer).
    ((cancel_requested, completed, xact),) = yield Execute(
        query("complete_in"), params, prepare=False
    )
    return HandOver(bool(completed), bool(cancel_requested), xact)


def completion_fates(
    conn: psycopg.Connection[Any], owner: str, handed: Sequence[tuple[Held, str]]
) -> list[Fate]:
    """What became of completions written by complete_in: `handed` is (attempt, transaction)."""
    if not handed:
        return []
    params = {
        "owner": owner,
        "ids": [held.id for held, _ in handed],
        "attempts": [held.attempts for held, _ in handed],
        "xacts": [xact for _, xact in handed],
    }
    return [Fate(*row) for row in conn.execute(query("completion_fates"), params)]


def fail(
    conn: psycopg.Connection[Any],
    owner: str,
    held: Held,
    error: str,
    traceback: str | None,
    retry_in: float,
    *,
    permanent: bool = False,
) -> JobState | None:
    """Record a failed attempt; the job's new state (failed or dead, or cancelled when a
    cancel was requested), None if the lease was lost.

    A `permanent` failure ends the job dead whatever budget it has left.
    """
    row = conn.execute(
        query("fail"),
        {
            "owner": owner,
            "id": held.id,
            "attempts": held.attempts,
            "error": error,
            "traceback": traceback,
            "retry_in": retry_in,
            "permanent": permanent,
        },
    ).fetchone()
    return JobState(row[0]) if row else None


def reschedule(
    conn: psycopg.Connection[Any], owner: str, held: Held, reason: str, retry_in: float
) -> JobState | None:
    """Run the job again in `retry_in` seconds, counting no failure; the job's new state
    (pending, or cancelled when a cancel was requested), None if the lease was lost."""
    row = conn.execute(
        query("reschedule"),
        {
            "owner": owner,
            "id": held.id,
            "attempts": held.attempts,
            "reason": reason,
            "retry_in": retry_in,
        },
    ).fetchone()
    return JobState(row[0]) if row else None


def release(
    conn: psycopg.Connection[Any], owner: str, reason: str = WORKER_EXITED
) -> list[Recovered]:
    """Return every job `owner` holds to pending (dead when spent, cancelled when asked to
    cancel): its process is gone."""
    return _recover(conn, owner, reason) or []  # no lock to lose: never None


def reap(conn: psycopg.Connection[Any]) -> list[Recovered] | None:
    """Recover every job whose lease has expired; None when another reaper is running.

    One statement, its advisory lock transaction-scoped: it works behind a
    transaction-pooling PgBouncer, and is never held past the statement.
    """
    return _recover(conn, None, LEASE_EXPIRED, _REAPER_LOCK)


def _recover(
    conn: psycopg.Connection[Any], owner: str | None, reason: str, lock: int | None = None
) -> list[Recovered] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        params = {"owner": owner, "reason": reason, "lock": lock}
        rows = cur.execute(query("recover"), params).fetchall()
    if not rows[0]["alone"]:
        return None
    return [
        Recovered(row["id"], row["queue"], row["task"], JobState(row["state"]), row["attempts"])
        for row in rows
        if row["id"] is not None
    ]


def encode_result(result: Any) -> str:
    """A task's return value as stored JSON; ValueError or TypeError when it is not JSON."""
    return json.dumps(result, allow_nan=False)
