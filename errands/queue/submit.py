"""Putting jobs on the queue: one in one statement, or many by COPY, idempotently, and at most one
live job per unique key; and workflows, jobs that run after others (docs/guides/workflows.md)."""

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


class Enqueued(NamedTuple):
    """What an enqueue stored or found, for each request. A named tuple: a batch makes
    one per job, and a frozen dataclass costs three times as much to build (four
    object.__setattr__ calls; measured 1.0 against 0.3 us a job)."""

    job: Job
    created: bool  # False: an idempotent replay of a stored job, or the live job of a unique key
    unique: bool = False  # the live job holding the request's unique key, returned instead
    replaced: bool = False  # ... whose payload and run_at the request replaced (on_conflict)


class _KeyRace(Exception):
    """A key our statement could neither insert nor see; run it again."""


def enqueue(conn: psycopg.Connection[Any], request: JobRequest) -> Enqueued:
    """Store one job; or return the stored job holding the same idempotency key, or the live job
    holding the same unique key (its payload and run_at replaced with on_conflict=replace)."""
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
            answer = yield from _enqueue_once(request, params)
            if answer is not None:
                if sending:
                    sending.sent([answer.job], created=answer.created)
                if answer.created:
                    hooks.enqueued([answer.job])
                return answer
    raise ErrandsError(
        f"could not settle idempotency key {request.idempotency_key!r} "
        f"or unique key {request.unique_key!r}"
    )


def _enqueue_once(request: JobRequest, params: dict[str, Any]) -> Operation[Enqueued | None]:
    """One try: the new job, or the job a key names; None when a key's holder was gone by the
    time it was looked up (the key is free again: try once more)."""
    rows = yield Execute(query("enqueue"), params)
    job_id, run_at, now, payload = rows[0]
    if job_id is not None:
        job = _new_job(request, job_id, payload, run_at, now, params["trace_context"])
        return Enqueued(job, created=True)
    if request.idempotency_key is not None:
        # Planned afresh, as every lookup of keys is (see above).
        rows = yield Execute(query("enqueue_replay"), params, dicts=True, prepare=False)
        if rows:
            return _answer(request, rows[0])
    if request.unique_key is None:
        return None
    if request.on_conflict == "replace":
        rows = yield Execute(query("enqueue_replace"), params, dicts=True, prepare=False)
        if rows:
            return Enqueued(Job.from_row(rows[0]), created=False, unique=True, replaced=True)
    rows = yield Execute(query("enqueue_unique"), params, dicts=True, prepare=False)
    return Enqueued(Job.from_row(rows[0]), created=False, unique=True) if rows else None


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
        "unique_key": request.unique_key,
    }


def enqueue_many(
    conn: psycopg.Connection[Any], requests: Sequence[JobRequest], field_prefix: str = "[{}]."
) -> list[Enqueued]:
    """Store many jobs in one transaction, all of them or none, in submission order.

    A key repeated inside the batch must come with the same request (later copies
    replay the first); otherwise IdempotencyConflict names both copies (`field_prefix`
    formatted with their index) before the database sees anything. The batch
    travels by COPY, which sends rows without parsing or planning a parameter per
    value: without keys, while no limit exists, straight into the jobs table, with
    ids drawn beforehand; otherwise into a staging table, and into the jobs table in
    one statement, which files each job under its limit group and returns each new
    job's id and stored payload. The rest of a
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
    raise ErrandsError("could not settle the idempotency or unique keys of a batch")


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
    if links is None and all(r.idempotency_key is None and r.unique_key is None for r in requests):
        copied = yield from _copy_batch(requests, trace_context)
        if copied is not None:
            return copied
    if links is not None and links.stored:
        yield from _lock_parents(links)
    now = yield from _stage(requests, trace_context, links)
    rows = yield Execute(query("enqueue_staged"), prepare=False)  # past the key locks, to the rows
    stored = [_Stored._make(row) for row in rows]
    live = yield from _live_jobs(requests)
    jobs = yield from _stored_jobs([row.id for row in stored if not row.created])
    pairing = _Pairing(stored, live, jobs, now, trace_context)
    answers = [pairing.answer(request) for request in requests]
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
) -> Operation[list[Enqueued] | None]:
    """A batch with no key to look up: COPY into the jobs table, with ids drawn first. The
    rows are built as they travel, and the answers while the server stores them.

    None, with nothing stored, once any limit exists: the batch then goes through the
    staging table, whose insert files each job under its limit group. COPY stores every
    job outside all groups, and filing them afterwards wrote each row twice: each first
    version's entry stayed in the claimable index's range of jobs under no limit, which
    every claim of the queue read through until a vacuum (215 index pages a claim after a
    batch of 20,000 limited jobs, bench/RESULTS.md).
    """
    rows = yield Execute(query("draw_job_ids"), {"count": len(requests)})
    now, ids, limited = rows[0]
    if limited:
        return None
    due = [request.due(now) for request in requests]
    copied = (
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
    )

    def answers() -> list[Enqueued]:
        return [
            Enqueued(
                _new_job(r, job_id, r.stored_payload, run_at, now, trace_context), created=True
            )
            for job_id, r, run_at in zip(ids, requests, due, strict=True)
        ]

    stored: list[Enqueued] = yield Copy(query("copy_jobs"), _JOB_TYPES, copied, answers)
    return stored


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
            r.unique_key,
            r.on_conflict,
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
    *("int4", "text", "text", "text", "int4", "timestamptz", "int4"),
    *("text", "text", "text", "text"),
    *("int8", "int8[]", "text", "int8"),
]


class _Stored(NamedTuple):
    """A row of `enqueue_staged`: a new job's id, keys and payload, or the id of the stored job
    an idempotency key names."""

    created: bool
    same_request: bool
    id: int
    idempotency_key: str | None
    unique_key: str | None
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class _Live:
    """The live job holding a unique key once the batch is stored, and whether the batch
    replaced its payload and run_at."""

    job: Job
    replaced: bool


def _live_jobs(requests: Sequence[JobFields]) -> Operation[dict[str, _Live]]:
    """The live jobs holding the batch's unique keys, after its replace requests (read in the
    batch's transaction)."""
    keys = sorted({r.unique_key for r in requests if r.unique_key is not None})
    if not keys:
        return {}
    rows = yield Execute(query("staged_unique"), {"keys": keys}, dicts=True, prepare=False)
    return {row["unique_key"]: _Live(Job.from_row(row), row["replaced"]) for row in rows}


class _Pairing:
    """The rows of one stored batch, handed to its requests in submission order: by
    idempotency key when a request has one, else by unique key (the first request naming a
    key created its job; the others get the live job), else in insertion order."""

    def __init__(
        self,
        rows: list[_Stored],
        live: dict[str, _Live],
        jobs: dict[int, Job],
        now: datetime,
        trace_context: str | None,
    ) -> None:
        self.by_key: dict[str, _Stored] = {}
        # Rows stored under each unique key, in insertion order: one, unless the key was free
        # again by the time a later request of the batch named it (a trigger of the
        # application's ended the first job at once).
        self.by_unique: dict[str, list[_Stored]] = {}
        unkeyed: list[_Stored] = []
        for row in sorted(rows, key=lambda row: row.id):
            if row.idempotency_key is not None:
                self.by_key[row.idempotency_key] = row
            elif row.unique_key is not None:
                self.by_unique.setdefault(row.unique_key, []).append(row)
            else:
                unkeyed.append(row)
        self.fresh = iter(unkeyed)
        self.live = live
        self.jobs = jobs  # stored before the batch, named by its idempotency keys
        self.now = now
        self.trace_context = trace_context
        self.first_with_key: dict[str, Job] = {}

    def answer(self, request: JobFields) -> Enqueued:
        if request.idempotency_key is not None:
            return self._by_idempotency_key(request, request.idempotency_key)
        if request.unique_key is not None:
            stored = self.by_unique.get(request.unique_key)
            if not stored:  # the key was held (by a job stored before, or by the batch's)
                return self._live(request)
            return Enqueued(self._created(request, stored.pop(0)), created=True)
        return Enqueued(self._new_job(request, next(self.fresh)), created=True)

    def _by_idempotency_key(self, request: JobFields, key: str) -> Enqueued:
        if key in self.first_with_key:
            # A key repeated inside one batch (the same request, checked before): a replay.
            return Enqueued(self.first_with_key[key], created=False)
        row = self.by_key.get(key)
        if row is None:
            if request.unique_key is None:
                raise _KeyRace
            return self._live(request)  # not stored: a live job holds its unique key
        job = self._created(request, row) if row.created else self.jobs[row.id]
        if not row.same_request:
            raise IdempotencyConflict(key, job.id)
        self.first_with_key[key] = job
        return Enqueued(job, created=row.created)

    def _created(self, request: JobFields, row: _Stored) -> Job:
        # Read again when the batch holds its unique key: a later request may have replaced it.
        found = self.live.get(request.unique_key or "")
        if found is not None and found.job.id == row.id:
            return found.job
        return self._new_job(request, row)

    def _live(self, request: JobFields) -> Enqueued:
        found = self.live.get(request.unique_key or "")
        if found is None:
            raise _KeyRace  # finished since the insert found it live: the key is free again
        replaced = found.replaced and request.on_conflict == "replace"
        return Enqueued(found.job, created=False, unique=True, replaced=replaced)

    def _new_job(self, request: JobFields, row: _Stored) -> Job:
        return _new_job(
            request, row.id, row.payload, request.due(self.now), self.now, self.trace_context
        )


def _stored_jobs(ids: list[int]) -> Operation[dict[int, Job]]:
    """The stored jobs that keys of the batch replay (read in the batch's transaction)."""
    if not ids:
        return {}
    rows = yield Execute(query("jobs_by_id"), {"ids": ids}, dicts=True)
    jobs = {row["id"]: Job.from_row(row) for row in rows}
    if len(jobs) < len(ids):
        raise _KeyRace  # pruned since the statement saw it: its key is free again
    return jobs


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
    fields.update(_NEW_JOB_IN_ORDER)
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
    fields["unique_key"] = request.unique_key
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
assert len(_NEW_JOB) + 14 == len(JOB_COLUMNS), "_new_job sets every field of a Job"
# Every field in the class's order, which _new_job's writes keep, as __init__ would: a job's
# JSON lists its fields in that order (errands/api/answers.py).
_NEW_JOB_IN_ORDER = dict.fromkeys(JOB_COLUMNS) | _NEW_JOB


def _answer(request: JobRequest, row: dict[str, Any]) -> Enqueued:
    job = Job.from_row(row)
    if not row["same_request"]:
        raise IdempotencyConflict(request.idempotency_key or "", job.id)
    return Enqueued(job, created=row["created"])
