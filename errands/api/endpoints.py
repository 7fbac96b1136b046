"""What each endpoint does: validate, call the queue functions, shape the answer.

OPERATIONS is the API: app.py routes it and openapi.py documents it. Handlers
are plain functions run on a request thread with a pooled connection (see
backend.py); they raise HTTPError for every answer that is not a success.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

import psycopg
from pydantic import BaseModel, Field, ValidationError
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import Headers
from starlette.responses import Response
from typing_extensions import TypedDict  # pydantic reads TypedDicts from it before 3.12

from errands import tracing
from errands.api.answers import JSONAnswer
from errands.api.errors import HTTPError, invalid
from errands.api.inputs import header, json_body
from errands.errors import FieldError, IdempotencyConflict, InvalidJob, InvalidState, JobNotFound
from errands.limits import MAX_JOB_ID
from errands.log import get_logger
from errands.metrics import exposition, metrics, queue_gauges, schedule_gauge
from errands.queue import admin, control
from errands.queue.control import QueueInfo
from errands.queue.jobs import Job, JobState
from errands.queue.requests import (
    Defaults,
    JobBatch,
    JobFilter,
    JobRequest,
    JobWait,
    NoQuery,
    QueueLimits,
    QueueName,
    WorkflowRequest,
    field_errors,
    parse_batch,
    parse_request,
    plan_workflow,
)
from errands.queue.schedules import ScheduleStatus, list_schedules
from errands.queue.steps import run
from errands.queue.submit import Enqueued, enqueue, enqueue_many, store_workflow_steps
from errands.queue.throttles import throttled

Conn = psycopg.Connection[Any]
T = TypeVar("T")
_log = get_logger("errands.api")


class JobIdDigits(Convertor[int]):
    """A job id in a path: 1 to 20 ASCII digits, else the path names no endpoint (`int`
    alone would take "٣", and more digits than 4,300 would crash it)."""

    regex = "[0-9]{1,20}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("job_id", JobIdDigits())


@dataclass
class Call:
    """What a handler reads of its request, gathered on the event loop."""

    params: Mapping[str, Any]  # from the path
    query: Any  # the operation's query model, validated
    body: bytes
    headers: Headers
    job_id: int | None = None  # set by the handler, for the request log


Handler = Callable[[Conn, Call], Response]


@dataclass(frozen=True)
class Answer:
    """A documented success: its status, the shape of its body, its headers."""

    status: int
    shape: Any  # a type the body conforms to
    description: str
    headers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    method: Literal["GET", "POST", "PATCH"]
    path: str
    summary: str
    handler: Handler | None  # None: answered on the event loop (app.py)
    answers: tuple[Answer, ...]
    errors: frozenset[int] = frozenset()  # beyond those every operation may meet
    query: type[BaseModel] = NoQuery
    body: type[BaseModel] | None = None
    token: bool = True  # asks for a bearer token when tokens are configured

    @property
    def route(self) -> str:
        """The path as Starlette routes it: a job id is digits."""
        return self.path.replace("{id}", "{id:job_id}")


# -- the shapes of the answers, for the document ---------------------------------------------


class JobPage(TypedDict):
    jobs: list[Job]
    next_after: int | None  # null on the last page


class JobList(TypedDict):
    jobs: list[Job]


class QueueList(TypedDict):
    queues: list[QueueInfo]


class ScheduleList(TypedDict):
    schedules: list[ScheduleStatus]


class WorkflowShown(TypedDict):
    id: int
    jobs: list[Job]  # stored: in the request's order; read: parents before children


class WorkflowStored(WorkflowShown):
    refs: dict[str, int]  # each ref's job id


class WorkerShown(TypedDict):
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: str
    heartbeat_at: str


class StatsShown(TypedDict):
    queues: dict[str, dict[JobState, int]]
    paused_queues: list[str]
    workers: list[WorkerShown]


class Status(TypedDict):
    status: str


# -- handlers -------------------------------------------------------------------------------


def submit(conn: Conn, call: Call, defaults: Defaults | None) -> Response:
    body = json_body(call.headers, call.body)
    if not isinstance(body, dict):
        raise invalid([FieldError("body", "must be a JSON object with the job's fields")])
    request = _parsed(parse_request, _with_header_key(body, call.headers), defaults)
    with tracing.continuing(call.headers):  # a traceparent header: the job continues that trace
        (answer,) = _stored(lambda: [enqueue(conn, request)])
    call.job_id = answer.job.id
    return JSONAnswer(answer.job, 201 if answer.created else 200, _replay_headers(answer))


def _replay_headers(answer: Enqueued) -> dict[str, str]:
    """Location, and what an answer that is not a new job is: an idempotent replay, or the live
    job of the unique key (replaced by this request, with on_conflict=replace)."""
    headers = {"Location": f"/jobs/{answer.job.id}"}
    if answer.unique:
        headers["Unique-Replayed"] = "true"
        if answer.replaced:
            headers["Unique-Replaced"] = "true"
    elif not answer.created:
        headers["Idempotent-Replayed"] = "true"
    return headers


def submit_batch(conn: Conn, call: Call, defaults: Defaults | None) -> Response:
    if "idempotency-key" in call.headers:
        # One key for many jobs would say nothing about which job it names.
        raise invalid(
            [FieldError("Idempotency-Key", "not taken by a batch: give each job idempotency_key")]
        )
    requests = _parsed(parse_batch, json_body(call.headers, call.body), defaults)
    with tracing.continuing(call.headers):
        answers = _stored(lambda: enqueue_many(conn, requests, field_prefix="jobs[{}]."))
    return JSONAnswer({"jobs": [a.job for a in answers]}, 201)


def submit_workflow(conn: Conn, call: Call, defaults: Defaults | None) -> Response:
    planned = _parsed(plan_workflow, json_body(call.headers, call.body), defaults)
    with tracing.continuing(call.headers):
        try:
            workflow_id, jobs = run(conn, store_workflow_steps(planned))
        except InvalidJob as exc:  # a stored parent that does not exist; nothing stored
            raise invalid(exc.errors) from None
    _stored(lambda: [Enqueued(job, created=True) for job in jobs])  # counted as enqueued
    in_request_order = sorted(zip(planned, jobs, strict=True), key=lambda pair: pair[0].place)
    body = {
        "id": workflow_id,
        "jobs": [job for _, job in in_request_order],
        "refs": {planned_job.ref: job.id for planned_job, job in in_request_order},
    }
    return JSONAnswer(body, 201, {"Location": f"/workflows/{workflow_id}"})


def get_workflow(conn: Conn, call: Call) -> Response:
    workflow_id: int = call.params["id"]
    jobs = run(conn, admin.workflow_steps(workflow_id)) if 1 <= workflow_id <= MAX_JOB_ID else []
    if not jobs:
        raise HTTPError(404, "not_found", f"workflow {workflow_id} does not exist")
    return JSONAnswer({"id": workflow_id, "jobs": jobs})


def get_job(conn: Conn, call: Call) -> Response:
    return job_response(call, read_job(conn, call))


def read_job(conn: Conn, call: Call) -> Job:
    job = admin.get(conn, job_id(call))
    if job is None:
        raise _not_found(call)
    return job


def job_response(call: Call, job: Job) -> Response:
    call.job_id = job.id
    return JSONAnswer(job)


def list_jobs(conn: Conn, call: Call) -> Response:
    where: JobFilter = call.query
    jobs = admin.list_jobs(conn, **where.model_dump())
    next_after = jobs[-1].id if len(jobs) == where.limit else None
    return JSONAnswer({"jobs": jobs, "next_after": next_after})


def retry_job(conn: Conn, call: Call) -> Response:
    return _manage(conn, call, admin.retry)


def cancel_job(conn: Conn, call: Call) -> Response:
    return _manage(conn, call, admin.cancel)


def stats(conn: Conn, call: Call, lease_seconds: float) -> Response:
    return JSONAnswer(admin.stats(conn, worker_silence_seconds=lease_seconds).to_dict())


def schedules(conn: Conn, call: Call) -> Response:
    return JSONAnswer({"schedules": [s.to_dict() for s in list_schedules(conn)]})


def list_queues(conn: Conn, call: Call) -> Response:
    return JSONAnswer({"queues": [q.to_dict() for q in control.queues(conn)]})


def set_queue_limits(conn: Conn, call: Call) -> Response:
    """PATCH /queues/{name} {"concurrency": N, "rate": "20/s"}: null removes, absent keeps."""
    body = json_body(call.headers, call.body)
    if not isinstance(body, dict):
        raise invalid([FieldError("body", "must be a JSON object: concurrency and/or rate")])
    try:
        changes = QueueLimits.model_validate(body)
    except ValidationError as exc:
        raise invalid(field_errors(exc)) from None
    return _control(conn, call, lambda conn, name: control.set_limits(conn, name, changes))


def pause_queue(conn: Conn, call: Call) -> Response:
    return _control(conn, call, control.pause)


def resume_queue(conn: Conn, call: Call) -> Response:
    return _control(conn, call, control.resume)


def ready(conn: Conn, call: Call, readiness: Callable[[], str | None] | None) -> Response:
    conn.execute("select 1")
    if readiness is not None and (reason := readiness()):
        raise HTTPError(503, "not_ready", reason)
    return JSONAnswer({"status": "ready"})


def prometheus(conn: Conn, call: Call) -> Response:
    def database_gauges() -> list[Any]:
        counts = [
            (q.queue, state.value, n)
            for q in admin.job_counts(conn)
            for state, n in q.counts.items()
        ]
        return [
            *queue_gauges(counts, admin.oldest_pending_seconds(conn), throttled(conn)),
            schedule_gauge(list_schedules(conn)),
        ]

    return Response(exposition(database_gauges), media_type="text/plain; version=0.0.4")


# -- helpers ---------------------------------------------------------------------------------


def _with_header_key(body: dict[str, Any], headers: Headers) -> dict[str, Any]:
    key = header(headers, "idempotency-key")
    if key is None:
        return body
    if body.get("idempotency_key") not in (None, key):
        raise HTTPError(
            409,
            "idempotency_conflict",
            "the Idempotency-Key header and the idempotency_key field give different keys",
            [FieldError("idempotency_key", "differs from the Idempotency-Key header")],
        )
    return {**body, "idempotency_key": key}


def _parsed(parse: Callable[..., T], fields: Any, defaults: Defaults | None) -> T:
    try:
        return parse(fields, defaults=defaults)
    except InvalidJob as exc:
        raise invalid(exc.errors) from None


def _stored(store: Callable[[], list[Enqueued]]) -> list[Enqueued]:
    try:
        answers = store()
    except IdempotencyConflict as exc:
        raise HTTPError(409, "idempotency_conflict", str(exc)) from None
    except InvalidJob as exc:  # `after` names a job that does not exist; nothing stored
        raise invalid(exc.errors) from None
    try:
        for answer in answers:
            if answer.created:
                metrics().jobs_enqueued.labels(answer.job.queue, answer.job.task).inc()
    except Exception:
        # The jobs are committed: a counter that cannot move must not turn that into an error.
        _log.exception("could not count enqueued jobs")
    return answers


def _manage(conn: Conn, call: Call, action: Callable[[Conn, int], Job]) -> Response:
    try:
        job = action(conn, job_id(call))
    except JobNotFound:
        raise _not_found(call) from None
    except InvalidState as exc:
        raise HTTPError(409, "invalid_state", str(exc)) from None
    return job_response(call, job)


def _control(conn: Conn, call: Call, action: Callable[[Conn, str], QueueInfo]) -> Response:
    try:
        return JSONAnswer(action(conn, call.params["name"]).to_dict())
    except InvalidJob as exc:
        raise invalid(exc.errors) from None


def job_id(call: Call) -> int:
    """The job id of the path; one beyond a bigint names no job (404)."""
    number: int = call.params["id"]
    if not 1 <= number <= MAX_JOB_ID:
        raise _not_found(call)
    return number


def _not_found(call: Call) -> HTTPError:
    return HTTPError(404, "not_found", f"job {call.params.get('id')} does not exist")


# -- the API -----------------------------------------------------------------------------------

_JOB = Answer(200, Job, "The job")
_JOB_ID = "/jobs/{id}"


def operations(
    lease_seconds: float = 30.0,
    readiness: Callable[[], str | None] | None = None,
    defaults: Defaults | None = None,
) -> tuple[Operation, ...]:
    """Every operation of the API, in the order the document lists them."""
    return (
        Operation(
            "POST",
            "/jobs",
            "Submit one job",
            partial(submit, defaults=defaults),
            (
                Answer(201, Job, "Created", {"Location": {"schema": {"type": "string"}}}),
                Answer(
                    200,
                    Job,
                    "An idempotent replay: the job stored under this idempotency key "
                    "(Idempotent-Replayed); or the job that holds this unique key, pending, "
                    "failed or in progress (Unique-Replayed), its payload and run_at replaced "
                    "by this request's with on_conflict=replace (Unique-Replaced)",
                    {
                        name: {"schema": {"type": "string", "enum": ["true"]}}
                        for name in ("Idempotent-Replayed", "Unique-Replayed", "Unique-Replaced")
                    },
                ),
            ),
            frozenset({401, 409, 413, 415}),
            body=JobRequest,
        ),
        Operation(
            "GET",
            "/jobs",
            "List jobs, newest first",
            list_jobs,
            (Answer(200, JobPage, "A page of jobs; next_after is null on the last page"),),
            frozenset({401}),
            query=JobFilter,
        ),
        Operation(
            "POST",
            "/jobs/batch",
            "Submit up to 1000 jobs in one transaction: all or none",
            partial(submit_batch, defaults=defaults),
            (Answer(201, JobList, "The jobs, in the order submitted (replays included)"),),
            frozenset({401, 409, 413, 415}),
            body=JobBatch,
        ),
        Operation(
            "GET",
            _JOB_ID,
            "One job; with `wait`, once it has finished (a long poll)",
            get_job,
            (_JOB,),
            frozenset({401, 404}),
            query=JobWait,
        ),
        Operation(
            "POST",
            _JOB_ID + "/retry",
            "Run a dead or cancelled job again, with a fresh attempt budget",
            retry_job,
            (_JOB,),
            frozenset({401, 404, 409, 413}),
        ),
        Operation(
            "POST",
            _JOB_ID + "/cancel",
            "Cancel a pending or failed job, or ask a running one to stop: it stays "
            "in_progress, cancel_requested_at set, until its attempt ends, then cancelled",
            cancel_job,
            (_JOB,),
            frozenset({401, 404, 409, 413}),
        ),
        Operation(
            "POST",
            "/workflows",
            "Store a workflow: jobs that run after others (`after` gives refs of jobs of the "
            "workflow and ids of stored jobs), in one transaction: all or none",
            partial(submit_workflow, defaults=defaults),
            (
                Answer(
                    201,
                    WorkflowStored,
                    "The workflow: its jobs in the order submitted, and each ref's job id",
                    {"Location": {"schema": {"type": "string"}}},
                ),
            ),
            frozenset({401, 413, 415}),
            body=WorkflowRequest,
        ),
        Operation(
            "GET",
            "/workflows/{id}",
            "One workflow: its jobs still stored, parents before children",
            get_workflow,
            (Answer(200, WorkflowShown, "The workflow"),),
            frozenset({401, 404}),
        ),
        Operation(
            "GET",
            "/queues",
            "Every queue that holds jobs, was ever paused or has a limit: counts, limits and "
            "their use, jobs held back",
            list_queues,
            (Answer(200, QueueList, "Queues by name"),),
            frozenset({401}),
        ),
        Operation(
            "PATCH",
            "/queues/{name}",
            "Set (a value) or remove (null) a queue's concurrency and rate limits",
            set_queue_limits,
            (Answer(200, QueueInfo, "The queue, as it is now"),),
            frozenset({401, 413, 415}),
            body=QueueLimits,
        ),
        Operation(
            "POST",
            "/queues/{name}/pause",
            "Pause a queue: its jobs stay pending, unclaimed, until it is resumed",
            pause_queue,
            (Answer(200, QueueInfo, "The queue, as it is now"),),
            frozenset({401, 413}),
        ),
        Operation(
            "POST",
            "/queues/{name}/resume",
            "Resume a paused queue",
            resume_queue,
            (Answer(200, QueueInfo, "The queue, as it is now"),),
            frozenset({401, 413}),
        ),
        Operation(
            "GET",
            "/stats",
            "Jobs per queue and state, and live workers",
            partial(stats, lease_seconds=lease_seconds),
            (Answer(200, StatsShown, "Counts and workers"),),
            frozenset({401}),
        ),
        Operation(
            "GET",
            "/schedules",
            "Periodic schedules: definition, next tick, last enqueued job",
            schedules,
            (Answer(200, ScheduleList, "Every schedule a scheduler declared, by name"),),
            frozenset({401}),
        ),
        Operation(
            "GET",
            "/health",
            "Liveness; no database call",
            None,
            (Answer(200, Status, "Alive"),),
            token=False,
        ),
        Operation(
            "GET",
            "/ready",
            "Readiness: the database answers; under errands run, a worker runs",
            partial(ready, readiness=readiness),
            (Answer(200, Status, "Ready"),),
            token=False,
        ),
        Operation(
            "GET",
            "/metrics",
            "Prometheus metrics",
            prometheus,
            (Answer(200, str, "Text exposition format"),),
            token=False,
        ),
        Operation(
            "GET",
            "/openapi.json",
            "This document",
            None,
            (Answer(200, dict[str, Any], "The OpenAPI document"),),
            frozenset({401}),
        ),
    )


# The types of the path parameters, which routing takes as text (a job id that is not one is a
# job that does not exist: 404; a queue name is validated by the queue functions: 422).
PATH_PARAMETERS: dict[str, Any] = {"id": Annotated[int, Field(ge=0)], "name": QueueName}
