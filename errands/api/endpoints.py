"""What each endpoint does: validate, call the queue functions, shape the answer.

Handlers are plain functions run on worker threads with a pooled connection;
they raise HTTPError for every answer that is not a success.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import structlog

from errands import queue
from errands.api.http import HTTPError, Request, Response, invalid, json_body
from errands.errors import FieldError, IdempotencyConflict, InvalidJob, InvalidState, JobNotFound
from errands.metrics import exposition, metrics, queue_gauges, schedule_gauge
from errands.queue import Enqueued, Job, JobRequest, JobState
from errands.queue.admin import MAX_LIST_LIMIT
from errands.queue.requests import (
    INT64_MAX,
    QUEUE_NAME,
    TASK_NAME,
    Choice,
    Field,
    Integer,
    Text,
)

MAX_BATCH = 1000

# The query parameters of GET /jobs: one table for the check and the OpenAPI document.
LIST_FILTERS: dict[str, Field] = {
    "state": Field(Choice(tuple(s.value for s in JobState))),
    "queue": Field(Text(QUEUE_NAME, "a queue name")),
    "task": Field(Text(TASK_NAME, "a task name")),
    "limit": Field(Integer(1, MAX_LIST_LIMIT), default=100),
    "after": Field(Integer(1, INT64_MAX), description="next_after of the previous page"),
}

Conn = psycopg.Connection[Any]
_log = structlog.get_logger("errands.api")


def submit(conn: Conn, request: Request) -> Response:
    body = json_body(request)
    if not isinstance(body, dict):
        raise invalid([FieldError("body", "must be a JSON object with the job's fields")])
    job_request = _parse(_with_header_key(body, request), prefix="")
    answer = _enqueue(lambda: [queue.enqueue(conn, job_request)])[0]
    status, headers = (201, []) if answer.created else (200, [("Idempotent-Replayed", "true")])
    headers.append(("Location", f"/jobs/{answer.job.id}"))
    return Response.json(status, answer.job.to_dict(), headers=headers, job_id=answer.job.id)


def submit_batch(conn: Conn, request: Request) -> Response:
    if "idempotency-key" in request.headers:
        # One key for many jobs would say nothing about which job it names.
        raise invalid(
            [FieldError("Idempotency-Key", "not taken by a batch: give each job idempotency_key")]
        )
    body = json_body(request)
    if not isinstance(body, dict) or set(body) != {"jobs"}:
        raise invalid([FieldError("body", 'must be an object with one field, "jobs"')])
    items = body["jobs"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise invalid([FieldError("jobs", f"must be a list of 1 to {MAX_BATCH} jobs")])
    requests, errors = [], []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(FieldError(f"jobs[{n}]", "must be a JSON object"))
            continue
        try:
            requests.append(queue.parse_request(item, prefix=f"jobs[{n}]."))
        except InvalidJob as exc:
            errors += exc.errors
    if errors:
        raise invalid(errors)
    answers = _enqueue(lambda: queue.enqueue_many(conn, requests, field_prefix="jobs[{}]."))
    return Response.json(201, {"jobs": [a.job.to_dict() for a in answers]})


def get_job(conn: Conn, request: Request) -> Response:
    job = queue.get(conn, _job_id(request))
    if job is None:
        raise _not_found(request)
    return Response.json(200, job.to_dict(), job_id=job.id)


def list_jobs(conn: Conn, request: Request) -> Response:
    filters = request.values
    jobs = queue.list_jobs(conn, **filters)
    next_after = jobs[-1].id if len(jobs) == filters["limit"] else None
    return Response.json(200, {"jobs": [j.to_dict() for j in jobs], "next_after": next_after})


def retry_job(conn: Conn, request: Request) -> Response:
    return _manage(conn, request, queue.retry)


def cancel_job(conn: Conn, request: Request) -> Response:
    return _manage(conn, request, queue.cancel)


def stats(conn: Conn, request: Request, lease_seconds: float) -> Response:
    return Response.json(200, queue.stats(conn, worker_silence_seconds=lease_seconds).to_dict())


def schedules(conn: Conn, request: Request) -> Response:
    return Response.json(200, {"schedules": [s.to_dict() for s in queue.list_schedules(conn)]})


def ready(conn: Conn, request: Request, readiness: Callable[[], str | None] | None) -> Response:
    conn.execute("select 1")
    if readiness is not None and (reason := readiness()):
        raise HTTPError(503, "not_ready", reason)
    return Response.json(200, {"status": "ready"})


def prometheus(conn: Conn, request: Request) -> Response:
    def database_gauges() -> list[Any]:
        counts = [
            (q.queue, state.value, n)
            for q in queue.job_counts(conn)
            for state, n in q.counts.items()
        ]
        return [
            *queue_gauges(counts, queue.oldest_pending_seconds(conn)),
            schedule_gauge(queue.list_schedules(conn)),
        ]

    return Response(200, exposition(database_gauges), "text/plain; version=0.0.4; charset=utf-8")


# -- helpers ---------------------------------------------------------------------------------


def _with_header_key(body: dict[str, Any], request: Request) -> dict[str, Any]:
    header = request.header("idempotency-key")
    if header is None:
        return body
    if body.get("idempotency_key") not in (None, header):
        raise HTTPError(
            409,
            "idempotency_conflict",
            "the Idempotency-Key header and the idempotency_key field give different keys",
            [FieldError("idempotency_key", "differs from the Idempotency-Key header")],
        )
    return {**body, "idempotency_key": header}


def _parse(fields: dict[str, Any], prefix: str) -> JobRequest:
    try:
        return queue.parse_request(fields, prefix=prefix)
    except InvalidJob as exc:
        raise invalid(exc.errors) from None


def _enqueue(store: Callable[[], list[Enqueued]]) -> list[Enqueued]:
    try:
        answers: list[Enqueued] = store()
    except IdempotencyConflict as exc:
        raise HTTPError(409, "idempotency_conflict", str(exc)) from None
    try:
        for answer in answers:
            if answer.created:
                metrics().jobs_enqueued.labels(answer.job.queue, answer.job.task).inc()
    except Exception:
        # The jobs are committed: a counter that cannot move must not turn that into an error.
        _log.exception("could not count enqueued jobs")
    return answers


def _manage(conn: Conn, request: Request, action: Callable[[Conn, int], Job]) -> Response:
    try:
        job = action(conn, _job_id(request))
    except JobNotFound:
        raise _not_found(request) from None
    except InvalidState as exc:
        raise HTTPError(409, "invalid_state", str(exc)) from None
    return Response.json(200, job.to_dict(), job_id=job.id)


def _job_id(request: Request) -> int:
    job_id = int(request.params["id"])  # the route matched ASCII digits only
    if job_id > INT64_MAX:
        raise _not_found(request)
    return job_id


def _not_found(request: Request) -> HTTPError:
    return HTTPError(404, "not_found", f"job {request.params.get('id')} does not exist")
