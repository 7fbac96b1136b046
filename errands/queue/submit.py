"""Putting jobs on the queue: one, or many in one round trip, idempotently."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from errands.errors import ErrandsError, IdempotencyConflict
from errands.queue.jobs import Job
from errands.queue.queries import query
from errands.queue.requests import JobRequest

# A key committed by a concurrent transaction while our statement ran is seen by
# the next statement; one more try settles it, a few more cover bad luck.
_KEY_RACE_TRIES = 5


@dataclass(frozen=True)
class Enqueued:
    job: Job
    created: bool  # False: an idempotent replay of a stored job


class _KeyRace(Exception):
    """A key our statement could neither insert nor see; run it again."""


def enqueue(conn: psycopg.Connection[Any], request: JobRequest) -> Enqueued:
    """Store one job, or return the stored job that holds the same idempotency key."""
    params = {
        "task": request.task,
        "queue": request.queue,
        "payload": request.payload_json,
        "priority": request.priority,
        "run_at": request.run_at,
        "max_attempts": request.max_attempts,
        "idempotency_key": request.idempotency_key,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        for _ in range(_KEY_RACE_TRIES):
            row = cur.execute(query("enqueue"), params).fetchone()
            if row is not None:
                return _answer(request, row)
    raise ErrandsError(f"could not settle idempotency key {request.idempotency_key!r}")


def enqueue_many(
    conn: psycopg.Connection[Any], requests: Sequence[JobRequest], field_prefix: str = "[{}]."
) -> list[Enqueued]:
    """Store many jobs in one statement and one transaction: all of them or none.

    A key repeated inside the batch must come with the same request (later copies
    replay the first); otherwise IdempotencyConflict names both copies (`field_prefix`
    formatted with their index) before the database sees anything.
    """
    if not requests:
        return []
    _refuse_conflicting_copies(requests, field_prefix)
    params = {
        "tasks": [r.task for r in requests],
        "queues": [r.queue for r in requests],
        "payloads": [r.payload_json for r in requests],
        "priorities": [r.priority for r in requests],
        "run_ats": [r.run_at for r in requests],
        "max_attempts": [r.max_attempts for r in requests],
        "idempotency_keys": [r.idempotency_key for r in requests],
    }
    for _ in range(_KEY_RACE_TRIES):
        try:
            # A savepoint when the caller has a transaction open: a conflict or
            # a race undoes this batch only.
            with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(query("enqueue_many"), params).fetchall()
                return _match(requests, rows)
        except _KeyRace:
            continue
    raise ErrandsError("could not settle the idempotency keys of a batch")


def _refuse_conflicting_copies(requests: Sequence[JobRequest], field_prefix: str) -> None:
    """A key repeated in the batch with another request; its first copy was never stored."""
    first: dict[str, int] = {}
    for n, request in enumerate(requests):
        key = request.idempotency_key
        if key is None:
            continue
        earlier = first.setdefault(key, n)
        if not request.same_request_as(requests[earlier]):
            where = [field_prefix.format(i).rstrip(".") for i in (earlier, n)]
            raise IdempotencyConflict(
                key,
                None,
                f"idempotency key {key!r} is given to {where[0]} and {where[1]} of the batch "
                "with a different task, queue or payload; nothing was stored",
            )


def _match(requests: Sequence[JobRequest], rows: list[dict[str, Any]]) -> list[Enqueued]:
    """Pair each request with its row: by key when it has one, else in insertion order."""
    by_key: dict[str, dict[str, Any]] = {}
    unkeyed: list[dict[str, Any]] = []
    for row in rows:
        if row["idempotency_key"] is None:
            unkeyed.append(row)
        else:
            by_key[row["idempotency_key"]] = row
    unkeyed.sort(key=lambda row: row["id"])
    fresh = iter(unkeyed)

    answers = []
    seen: set[str] = set()
    for request in requests:
        key = request.idempotency_key
        if key is None:
            answers.append(Enqueued(Job.from_row(next(fresh)), created=True))
        elif key not in by_key:
            raise _KeyRace
        elif key not in seen:
            seen.add(key)
            answers.append(_answer(request, by_key[key]))
        else:
            # A key repeated inside one batch (the same request, checked before): a replay.
            answers.append(Enqueued(Job.from_row(by_key[key]), created=False))
    return answers


def _answer(request: JobRequest, row: dict[str, Any]) -> Enqueued:
    job = Job.from_row(row)
    if not row["same_request"]:
        raise IdempotencyConflict(request.idempotency_key or "", job.id)
    return Enqueued(job, created=row["created"])
