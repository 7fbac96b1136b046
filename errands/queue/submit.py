"""Putting jobs on the queue: one in one statement, or many by COPY, idempotently; and
workflows, jobs that run after others (docs/guides/workflows.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import psycopg

from errands import hooks, tracing
from errands.errors import ErrandsError, FieldError, IdempotencyConflict, InvalidJob
from errands.queue.jobs import JOB_COLUMNS, Job, JobState
from errands.queue.queries import query
from errands.queue.requests import JobFields, JobRequest, PlannedJob
from errands.queue.steps import Atomic, Copy, Execute, Operation, run

# A key committed by a concurrent transaction while our statement ran is seen by
# the next statement; one more try settles it, a few more cover bad luck.
_KEY_RACE_TRIES = 5

# Statements that look up idempotency keys are planned at every execution
# (prepare=False), never from a plan cached on the connection: a plan made while
# the jobs table was nearly empty reads the whole table for each key once it has
# grown (measured: enqueues with a key fell from 1,092/s to 396/s within 6,000
# jobs of a vacuumed table, until the next ANALYZE).


@dataclass(frozen=True)
class Enqueued:
    job: Job
    created: bool  # False: an idempotent replay of a stored job


class _KeyRace(Exception):
    """A key our statement could neither insert nor see; run it again."""


def enqueue(conn: psycopg.Connection[Any], request: JobRequest) -> Enqueued:
    """Store one job, or return the stored job that holds the same idempotency key."""
    return run(conn, enqueue_steps(request))


def enqueue_steps(request: JobRequest) -> Operation[Enqueued]:
    """`enqueue`, as steps (errands/queue/steps.py)."""
    if request.after:  # its parents are locked and counted as a batch's are
        answers = yield from enqueue_many_steps([request], field_prefix="")
        return answers[0]
    with tracing.sending([request.queue]) as sending:
        trace_context = sending.trace_context if sending else None
        params = enqueue_params(request, trace_context)
        for _ in range(_KEY_RACE_TRIES):
            rows = yield Execute(query("enqueue"), params)
            answer: Enqueued | None
            if rows:
                job_id, run_at, now, payload = rows[0]
                job = _new_job(request, job_id, payload, run_at, now, trace_context)
                answer = Enqueued(job, created=True)
            else:
                # Planned afresh, as every lookup of keys is (see above).
                rows = yield Execute(query("enqueue_replay"), params, dicts=True, prepare=False)
                answer = _answer(request, rows[0]) if rows else None
            if answer is not None:
                if sending:
                    sending.sent([answer.job], created=answer.created)
                if answer.created:
                    hooks.enqueued([answer.job])
                return answer
    raise ErrandsError(f"could not settle idempotency key {request.idempotency_key!r}")


def enqueue_params(request: JobRequest, trace_context: str | None = None) -> dict[str, Any]:
    """The enqueue statement's parameters for one request (the bench's floor sends them too)."""
    return {
        "task": request.task,
        "queue": request.queue,
        "payload": request.payload_json,
        "priority": request.priority,
        "run_at": request.run_at,
        "delay": request.delay,
        "max_attempts": request.max_attempts,
        "idempotency_key": request.idempotency_key,
        "trace_context": trace_context,
    }


def enqueue_many(
    conn: psycopg.Connection[Any], requests: Sequence[JobRequest], field_prefix: str = "[{}]."
) -> list[Enqueued]:
    """Store many jobs in one transaction, all of them or none, in submission order.

    A key repeated inside the batch must come with the same request (later copies
    replay the first); otherwise IdempotencyConflict names both copies (`field_prefix`
    formatted with their index) before the database sees anything. The batch
    travels by COPY, which sends rows without parsing or planning a parameter per
    value: without idempotency keys straight into the jobs table, with ids drawn
    beforehand; with keys into a staging table, and into the jobs table in one
    statement, which returns each new job's id and stored payload. The rest of a
    new job is the request and the transaction's time, which every new job of the
    batch is stamped with.
    """
    return run(conn, enqueue_many_steps(requests, field_prefix))


def enqueue_many_steps(
    requests: Sequence[JobRequest], field_prefix: str = "[{}]."
) -> Operation[list[Enqueued]]:
    """`enqueue_many`, as steps (errands/queue/steps.py)."""
    if not requests:
        return []
    _refuse_conflicting_copies(requests, field_prefix)
    with tracing.sending([r.queue for r in requests]) as sending:
        trace_context = sending.trace_context if sending else None
        for _ in range(_KEY_RACE_TRIES):
            try:
                # A savepoint when the caller has a transaction open: a conflict or
                # a race undoes this batch only.
                answers: list[Enqueued] = yield Atomic(
                    _store_batch(requests, trace_context, _Links.of(requests, field_prefix))
                )
            except _KeyRace:
                continue
            created = [answer.job for answer in answers if answer.created]
            if sending:
                sending.sent([answer.job for answer in answers], created=len(created))
            hooks.enqueued(created)
            return answers
    raise ErrandsError("could not settle the idempotency keys of a batch")


def store_workflow_steps(
    planned: Sequence[PlannedJob], field: str = "jobs"
) -> Operation[tuple[int, list[Job]]]:
    """Store the jobs of a workflow (requests.plan_workflow's order) in one transaction, or
    none: its id, and its jobs in the order planned. InvalidJob names a stored parent that
    does not exist (`jobs[3].after[1]`)."""
    requests = [job.request for job in planned]
    with tracing.sending([r.queue for r in requests]) as sending:
        trace_context = sending.trace_context if sending else None
        rows = yield Execute(query("allocate_workflow"), {"jobs": len(planned)}, dicts=True)
        workflow_id: int = rows[0]["workflow_id"]
        links = _Links.of_workflow(planned, rows[0]["ids"], workflow_id, field)
        answers = yield Atomic(_store_batch(requests, trace_context, links))
        jobs = [answer.job for answer in answers]
        if sending:
            sending.sent(jobs, created=len(jobs))
        hooks.enqueued(jobs)
        return workflow_id, jobs


@dataclass(frozen=True)
class _Links:
    """What a batch stores beyond its jobs: each one's parents (ids), the stored parents the
    batch names (with the field naming each, for errors), and for a workflow its id and the
    ids its jobs were given ahead of the insert."""

    parents: list[list[int] | None]
    stored: dict[int, str]
    on_parent_failure: list[str]
    ids: list[int] | None = None
    workflow_id: int | None = None

    @classmethod
    def of(cls, requests: Sequence[JobRequest], field_prefix: str) -> _Links | None:
        if not any(r.after for r in requests):
            return None
        stored: dict[int, str] = {}
        for n, r in enumerate(requests):
            for i, parent in enumerate(r.after or ()):
                stored.setdefault(parent, f"{field_prefix.format(n)}after[{i}]")
        return cls(
            [list(r.after) if r.after else None for r in requests],
            stored,
            [r.on_parent_failure for r in requests],
        )

    @classmethod
    def of_workflow(
        cls, planned: Sequence[PlannedJob], ids: list[int], workflow_id: int, field: str
    ) -> _Links:
        stored: dict[int, str] = {}
        for job in planned:
            for i, parent in enumerate(job.after):
                if isinstance(parent, int):
                    stored.setdefault(parent, f"{field}[{job.place}].after[{i}]")
        parents = [
            [*job.stored_parents, *(ids[n] for n in job.parents_here)] or None for job in planned
        ]
        return cls(
            parents,
            stored,
            [job.request.on_parent_failure for job in planned],
            ids,
            workflow_id,
        )


def _store_batch(
    requests: Sequence[JobFields], trace_context: str | None, links: _Links | None = None
) -> Operation[list[Enqueued]]:
    if links is None and all(request.idempotency_key is None for request in requests):
        return (yield from _copy_batch(requests, trace_context))
    if links is not None and links.stored:
        yield from _lock_parents(links)
    now = yield from _stage(requests, trace_context, links)
    rows = yield Execute(query("enqueue_staged"), prepare=False)  # past the key locks, to the rows
    stored = [_Stored._make(row) for row in rows]
    jobs = yield from _stored_jobs([row.id for row in stored if not row.created])
    answers = _match(requests, stored, jobs, now, trace_context)
    if links is None:
        return answers
    return (yield from _settle(answers, links))


def _lock_parents(links: _Links) -> Operation[None]:
    """Lock the stored parents the batch names (lock_parents); InvalidJob for those missing."""
    rows = yield Execute(query("lock_parents"), {"ids": sorted(links.stored)})
    missing = set(links.stored) - {row[0] for row in rows}
    if missing:
        raise InvalidJob(
            [FieldError(links.stored[i], f"no job has id {i}") for i in sorted(missing)]
        )


def _settle(answers: list[Enqueued], links: _Links) -> Operation[list[Enqueued]]:
    """The new jobs with stored parents count what they wait for as those parents are now
    (settle_children); every job that waits, and every job of a workflow, is read back as
    stored."""
    new = [
        answer.job.id
        for answer, parents in zip(answers, links.parents, strict=True)
        if answer.created and (parents or links.workflow_id is not None)
    ]
    if not new:
        return answers
    with_stored = [
        answer.job.id
        for answer, parents in zip(answers, links.parents, strict=True)
        if answer.created and parents and not set(parents).isdisjoint(links.stored)
    ]
    if with_stored:
        yield Execute(query("settle_children"), {"ids": with_stored})
    jobs = yield from _stored_jobs(new)
    return [Enqueued(jobs.get(answer.job.id, answer.job), answer.created) for answer in answers]


def _copy_batch(
    requests: Sequence[JobFields], trace_context: str | None
) -> Operation[list[Enqueued]]:
    """A batch with no key to look up: COPY into the jobs table, with ids drawn first."""
    rows = yield Execute(query("draw_job_ids"), {"count": len(requests)})
    now, ids = rows[0]
    due = [request.due(now) for request in requests]
    copied = [
        (
            job_id,
            r.task,
            r.queue,
            r.payload_json,
            r.priority,
            run_at,
            r.max_attempts,
            r.max_attempts,
            trace_context,
        )
        for job_id, r, run_at in zip(ids, requests, due, strict=True)
    ]
    yield Copy(query("copy_jobs"), _JOB_TYPES, copied)
    return [
        Enqueued(_new_job(r, job_id, r.stored_payload, run_at, now, trace_context), created=True)
        for job_id, r, run_at in zip(ids, requests, due, strict=True)
    ]


# The types COPY sends copy_jobs's columns as (the payload as JSON text).
_JOB_TYPES = ["int8", "text", "text", "text", "int4", "timestamptz", "int4", "int4", "text"]


def _refuse_conflicting_copies(requests: Sequence[JobFields], field_prefix: str) -> None:
    """A key repeated in the batch with another request (compared as the database compares
    a replay, `same_request_as`); its first copy was never stored."""
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


def _stage(
    requests: Sequence[JobFields], trace_context: str | None, links: _Links | None
) -> Operation[datetime]:
    """Copy the requests into the staging table; the transaction's time, which new jobs get."""
    rows = yield Execute(query("stage_jobs"))
    assert rows, "stage_jobs ends with select now()"
    now: datetime = rows[0][0]
    staged = [
        (
            n,
            r.task,
            r.queue,
            r.payload_json,
            r.priority,
            r.due(now),
            r.max_attempts,
            r.idempotency_key,
            trace_context,
            links.ids[n] if links and links.ids else None,
            links.parents[n] if links else None,
            r.on_parent_failure,
            links.workflow_id if links else None,
        )
        for n, r in enumerate(requests)
    ]
    yield Copy(query("copy_staged"), _STAGED_TYPES, staged)
    return now


# The types COPY sends the staged columns as (the payload as JSON text).
_STAGED_TYPES = [
    "int4",
    "text",
    "text",
    "text",
    "int4",
    "timestamptz",
    "int4",
    "text",
    "text",
    "int8",
    "int8[]",
    "text",
    "int8",
]


class _Stored(NamedTuple):
    """A row of `enqueue_staged`: a new job's id and payload, or the id of the stored job
    a key names."""

    created: bool
    same_request: bool
    id: int
    idempotency_key: str | None
    payload: dict[str, Any] | None


def _match(
    requests: Sequence[JobFields],
    rows: list[_Stored],
    jobs: dict[int, Job],
    now: datetime,
    trace_context: str | None,
) -> list[Enqueued]:
    """Pair each request with its row: by key when it has one, else in insertion order."""
    by_key: dict[str, _Stored] = {}
    unkeyed: list[_Stored] = []
    for row in rows:
        if row.idempotency_key is None:
            unkeyed.append(row)
        else:
            by_key[row.idempotency_key] = row
    unkeyed.sort(key=lambda row: row.id)
    fresh = iter(unkeyed)

    answers = []
    first_with_key: dict[str, Job] = {}
    for request in requests:
        key = request.idempotency_key
        if key is None:
            answers.append(
                Enqueued(_new_row_job(request, next(fresh), now, trace_context), created=True)
            )
        elif key not in by_key:
            raise _KeyRace
        elif key not in first_with_key:
            row = by_key[key]
            job = _new_row_job(request, row, now, trace_context) if row.created else jobs[row.id]
            if not row.same_request:
                raise IdempotencyConflict(key, job.id)
            first_with_key[key] = job
            answers.append(Enqueued(job, created=row.created))
        else:
            # A key repeated inside one batch (the same request, checked before): a replay.
            answers.append(Enqueued(first_with_key[key], created=False))
    return answers


def _stored_jobs(ids: list[int]) -> Operation[dict[int, Job]]:
    """The stored jobs that keys of the batch replay (read in the batch's transaction)."""
    if not ids:
        return {}
    rows = yield Execute(query("jobs_by_id"), {"ids": ids}, dicts=True)
    jobs = {row["id"]: Job.from_row(row) for row in rows}
    if len(jobs) < len(ids):
        raise _KeyRace  # pruned since the statement saw it: its key is free again
    return jobs


def _new_row_job(request: JobFields, row: _Stored, now: datetime, trace_context: str | None) -> Job:
    """A job of a batch just inserted: its row, and when the batch was stored."""
    return _new_job(request, row.id, row.payload, request.due(now), now, trace_context)


def _new_job(
    request: JobFields,
    job_id: int,
    payload: dict[str, Any] | None,
    run_at: datetime,
    now: datetime,
    trace_context: str | None,
) -> Job:
    """A job just inserted, as the database stores it: the request, and what the database
    said of it (its id, its payload as stored, when it is due, when it was stored).

    Built as Job.from_fields builds a job, its fields written straight into the new
    instance: a batch builds a thousand, and an intermediate dict per job cost 40%
    more (measured, shared machine: 3.1-7.0 against 1.8-3.8 us a job)."""
    job: Job = object.__new__(Job)
    fields = job.__dict__
    fields.update(_NEW_JOB)
    fields["id"] = job_id
    fields["queue"] = request.queue
    fields["task"] = request.task
    fields["payload"] = payload
    fields["priority"] = request.priority
    # In the session's time zone, as every timestamp read from the database.
    fields["run_at"] = run_at
    fields["max_attempts"] = request.max_attempts
    fields["idempotency_key"] = request.idempotency_key
    fields["on_parent_failure"] = request.on_parent_failure
    fields["errors"] = []
    fields["created_at"] = fields["updated_at"] = now
    fields["trace_context"] = None if trace_context is None else json.loads(trace_context)
    return job


# What every new job holds, whatever its request.
_NEW_JOB: dict[str, Any] = {
    "state": JobState.PENDING,
    "attempts": 0,
    "lease_owner": None,
    "lease_expires_at": None,
    "last_error": None,
    "result": None,
    "started_at": None,
    "finished_at": None,
    "cancel_requested_at": None,  # running jobs (issue 24)
    "progress": None,
    # Workflows: a job with parents, or of a workflow, is read back as stored (_settle).
    "parents": None,
    "workflow_id": None,
    "cancelled_by": None,
}
assert len(_NEW_JOB) + 13 == len(JOB_COLUMNS), "_new_job sets every field of a Job"


def _answer(request: JobRequest, row: dict[str, Any]) -> Enqueued:
    job = Job.from_row(row)
    if not row["same_request"]:
        raise IdempotencyConflict(request.idempotency_key or "", job.id)
    return Enqueued(job, created=row["created"])
