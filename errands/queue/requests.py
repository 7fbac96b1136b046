"""What a request to the queue may say: one pydantic model per request, for every entry point.

The HTTP API, `errands.Client`, the CLI and the dashboard validate with these
models, before the database sees anything, and every problem is reported at
once with the field it concerns (`jobs[3].priority`). `/openapi.json` is
generated from them, so the document cannot drift from the checks.

Values arrive in two forms. JSON and Python values (a body, keyword
arguments): a number must be a number. Text (a query string, a path, a
command-line option), validated with `context=TEXT`: integers and decimals in
ASCII digits only, since int() and float() also take "٣", "²", "1_000" and
"nan". `null` (None) means absent for every optional field.
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainValidator,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError
from typing_extensions import TypeAliasType

from errands.errors import FieldError, InvalidArgument, InvalidJob
from errands.limits import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    MAX_ATTEMPTS_LIMIT,
    MAX_BATCH,
    MAX_DELAY_SECONDS,
    MAX_IDEMPOTENCY_KEY,
    MAX_JOB_ID,
    MAX_LIMIT,
    MAX_LIST_LIMIT,
    MAX_PARENTS,
    MAX_PAYLOAD_DEPTH,
    MAX_PROGRESS_BYTES,
    MAX_REF,
    MAX_UNIQUE_KEY,
    MAX_WAIT_SECONDS,
    MAX_WORKFLOW,
    PRIORITY_RANGE,
    RUN_AT_YEARS,
)
from errands.queue.jobs import JobState
from errands.queue.throttles import RATE, Kind, Rate

# Validation context for values given as text.
TEXT: Final = {"text": True}

# Patterns are written once, for Python (fullmatch), pydantic (Rust's regex engine) and JSON
# Schema (ECMA-262, where `$` is the end of input): all mean what PostgreSQL's checks mean,
# so "name\n" is refused here, never by a CheckViolation.
TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
# No NUL (PostgreSQL cannot store it), and no space or tab at either end: HTTP strips them
# from a header, so an Idempotency-Key header could never carry the same key as the body.
IDEMPOTENCY_KEY = re.compile(r"^[^\x00 \t](?:[^\x00]*[^\x00 \t])?$")
NO_NUL = re.compile(r"^[^\x00]*$")
# RFC 3339 (upper- or lower-case T and Z, the extended format only), years 0002 to 9998.
RFC3339 = re.compile(
    r"^(?!000[01]|9999)[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
# Numbers given as text: ASCII only, and few enough digits that int() never meets Python's
# 4,300-digit limit.
INTEGER_TEXT = re.compile(r"-?[0-9]{1,30}")
DECIMAL_TEXT = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,20})?(?:[eE][-+]?[0-9]{1,3})?")
# \u0000 preceded by an even number of backslashes: an escaped NUL, not the text "\u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# One encoder for every payload: json.dumps given options builds a new one per call.
_PAYLOAD_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def _is_text(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("text"))


def _refuse(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid", message)


# -- integers ---------------------------------------------------------------------------------


def _integer_from_text(value: Any, info: ValidationInfo) -> Any:
    if _is_text(info) and isinstance(value, str):
        if not INTEGER_TEXT.fullmatch(value):
            raise _refuse("must be an integer in ASCII digits")
        return int(value)
    return value


def _integer_from_number(value: Any, info: ValidationInfo) -> Any:
    """JSON has one number type: 3.0 is the integer 3, as JSON Schema also says."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return _integer_from_text(value, info)


# The validator comes last: it runs first, and the constraints keep their JSON Schema names.
JobId = Annotated[StrictInt, Field(ge=1, le=MAX_JOB_ID), BeforeValidator(_integer_from_text)]
Priority = Annotated[
    StrictInt,
    Field(ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1], description="higher runs first"),
    BeforeValidator(_integer_from_number),
]
MaxAttempts = Annotated[
    StrictInt, Field(ge=1, le=MAX_ATTEMPTS_LIMIT), BeforeValidator(_integer_from_number)
]
ListLimit = Annotated[
    StrictInt, Field(ge=1, le=MAX_LIST_LIMIT), BeforeValidator(_integer_from_text)
]


# -- seconds ----------------------------------------------------------------------------------


def _seconds(low: float, high: float) -> PlainValidator:
    """A number of seconds between `low` and `high` (a timedelta from Python too)."""

    def parse(value: Any, info: ValidationInfo) -> float:
        if isinstance(value, str) and _is_text(info) and DECIMAL_TEXT.fullmatch(value):
            value = float(value)
        if isinstance(value, timedelta):
            value = value.total_seconds()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse("must be a number of seconds")
        # Compared before any conversion (float(10**400) would overflow); NaN compares false.
        if not low <= value <= high:
            raise _refuse(f"must be between {low:g} and {high:g} seconds")
        return float(value)

    return PlainValidator(parse)


def _seconds_schema(low: float, high: float) -> WithJsonSchema:
    return WithJsonSchema({"type": "number", "minimum": low, "maximum": high})


Delay = Annotated[float, _seconds(0, MAX_DELAY_SECONDS), _seconds_schema(0, MAX_DELAY_SECONDS)]
Wait = Annotated[float, _seconds(0, MAX_WAIT_SECONDS), _seconds_schema(0, MAX_WAIT_SECONDS)]


# -- text -------------------------------------------------------------------------------------

TaskName = Annotated[StrictStr, Field(pattern=TASK_NAME.pattern)]
QueueName = Annotated[StrictStr, Field(pattern=QUEUE_NAME.pattern)]
IdempotencyKey = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        pattern=IDEMPOTENCY_KEY.pattern,
        description="one job per key, for as long as the job is stored",
    ),
]

UniqueKey = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=MAX_UNIQUE_KEY,
        pattern=NO_NUL.pattern,
        description="at most one job per key is pending, failed or in progress; a second "
        "enqueue returns that job",
    ),
]
OnConflict = Annotated[
    Literal["keep", "replace"],
    Field(
        description="with unique_key, when a job holds the key already: keep it as it is "
        "(default), or replace the payload and run_at of a still pending one (debounce)"
    ),
]
Concurrency = Annotated[
    StrictInt,
    Field(ge=1, le=MAX_LIMIT, description="jobs in progress at once, across every host"),
    BeforeValidator(_integer_from_number),
]


def _rate(value: Any) -> Rate:
    if isinstance(value, Rate):
        return value
    if not isinstance(value, str):
        raise _refuse("must be a string such as 30/m")
    try:
        return Rate.parse(value)
    except ValueError as exc:
        raise _refuse(str(exc)) from None


RateText = Annotated[
    Rate,
    PlainValidator(_rate),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": RATE.pattern,
            "description": "at most N starts in any window of a second, minute or hour "
            "(N/s, N/m, N/h), across every host",
        }
    ),
]


def _timestamp(value: Any) -> datetime:
    if isinstance(value, str):
        if not RFC3339.fullmatch(value):
            raise _refuse(
                "must be an RFC 3339 timestamp with an offset, "
                f"years {RUN_AT_YEARS[0]:04} to {RUN_AT_YEARS[1]}"
            )
        try:
            value = datetime.fromisoformat(value.upper())
        except ValueError:  # a day the month lacks
            raise _refuse("is not a date of the calendar") from None
    if not isinstance(value, datetime):
        raise _refuse("must be a timestamp")
    if value.tzinfo is None or value.utcoffset() is None:
        raise _refuse("must carry a time zone offset (a naive time is ambiguous)")
    if not RUN_AT_YEARS[0] <= value.year <= RUN_AT_YEARS[1]:
        raise _refuse(f"must be in the years {RUN_AT_YEARS[0]:04} to {RUN_AT_YEARS[1]}")
    # In UTC: PostgreSQL refuses offsets beyond ±15:59 that RFC 3339 allows.
    return value.astimezone(UTC)


RunAt = Annotated[
    datetime,
    PlainValidator(_timestamp),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": RFC3339.pattern,
            "description": "not before this time; not with delay",
        }
    ),
]


# -- payloads ---------------------------------------------------------------------------------

NoNulText = Annotated[str, Field(pattern=NO_NUL.pattern)]
# Any JSON value PostgreSQL's jsonb can store: no NUL character in a string or a name.
JsonValue = TypeAliasType(
    "JsonValue",
    "bool | int | float | NoNulText | list[JsonValue] | dict[NoNulText, JsonValue] | None",
)


def _payload(value: Any) -> dict[str, Any]:
    """The payload as it will read back from the database."""
    if not isinstance(value, Mapping):
        raise _refuse("must be a JSON object (the task's keyword arguments)")
    return _as_stored(value)


def _as_stored(value: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object as it will read back from the database, or a refusal saying why not."""
    if _depth_exceeds(value, MAX_PAYLOAD_DEPTH):
        raise _refuse(f"must not be nested more than {MAX_PAYLOAD_DEPTH} levels deep")
    try:
        # The round trip normalises tuples and rejects NaN, infinities and non-JSON values,
        # so that a replayed request compares equal to what the database holds. Unescaped
        # text keeps a lone surrogate visible; NUL is escaped (\u0000) either way.
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise _refuse(f"must be JSON-serialisable without NaN or infinity ({exc})") from None
    if _ESCAPED_NUL.search(text):
        raise _refuse("must not contain NUL characters (PostgreSQL cannot store them)")
    if not _is_unicode(text):
        raise _refuse("must be valid Unicode (a lone surrogate is not)")
    parsed: dict[str, Any] = json.loads(text)
    return parsed


Payload = Annotated[
    dict[str, Any],
    PlainValidator(_payload, json_schema_input_type=dict[NoNulText, JsonValue]),
    Field(
        description="the task's keyword arguments: JSON without NUL characters, "
        f"nested at most {MAX_PAYLOAD_DEPTH} levels"
    ),
]


class _NullMeansDefault:
    """In the JSON Schema, a field with a default also takes null: null means absent."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [handler(core_schema), {"type": "null"}]}


# -- progress ---------------------------------------------------------------------------------


def _progress(value: Any) -> float | dict[str, Any]:
    """What a running task reports (current_job().set_progress): how much of it is done,
    from 0 to 1, or a small JSON object of its own making."""
    if isinstance(value, Mapping):
        stored = _as_stored(value)
        if len(_PAYLOAD_ENCODER.encode(stored).encode()) > MAX_PROGRESS_BYTES:
            raise _refuse(f"must take at most {MAX_PROGRESS_BYTES} bytes as compact JSON")
        return stored
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse("must be a number from 0 to 1, or a JSON object")
    if not 0 <= value <= 1:  # NaN compares false
        raise _refuse("must be between 0 and 1")
    return float(value)


_PROGRESS: TypeAdapter[float | dict[str, Any]] = TypeAdapter(
    Annotated[float | dict[str, Any], PlainValidator(_progress)]
)


def progress_json(value: Any) -> str:
    """`value` as the progress JSON to store; InvalidArgument naming `progress` if it is not one."""
    try:
        return _PAYLOAD_ENCODER.encode(_PROGRESS.validate_python(value))
    except ValidationError as exc:
        raise InvalidArgument(field_errors(exc, "progress")) from None


# -- job requests ----------------------------------------------------------------------------


OnParentFailure = Literal["cancel", "run"]
_ON_PARENT_FAILURE = (
    "when a parent ends dead or cancelled: cancel this job (and the jobs waiting for it), "
    "or run it once its other parents completed"
)


def _once(parents: list[Any] | None) -> list[Any] | None:
    """A parent named twice: refused (it would be waited for once)."""
    if parents is not None and len(set(parents)) < len(parents):
        raise _refuse("must not name a job twice")
    return parents


@dataclass(frozen=True)
class TaskDefaults:
    """What a registered task declares for its jobs, when a request names no other."""

    queue: str
    max_attempts: int


# Finds the defaults of a task by name; None for a task this process does not know.
Defaults = Callable[[str], TaskDefaults | None]


class JobFields(BaseModel):
    """What every request to enqueue a job says, alone or in a workflow."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        defer_build=True,
        json_schema_extra={
            "allOf": [
                {  # run_at and delay both given (null is absent): refused
                    "not": {
                        "required": ["run_at", "delay"],
                        "properties": {"run_at": {"type": "string"}, "delay": {"type": "number"}},
                    }
                },
                {  # on_conflict replace only with a unique key
                    "if": {
                        "required": ["on_conflict"],
                        "properties": {"on_conflict": {"const": "replace"}},
                    },
                    "then": {
                        "required": ["unique_key"],
                        "properties": {"unique_key": {"type": "string"}},
                    },
                },
            ]
        },
    )

    task: TaskName
    payload: Annotated[Payload, _NullMeansDefault] = Field(default_factory=dict)
    queue: Annotated[QueueName, _NullMeansDefault] = DEFAULT_QUEUE
    priority: Annotated[Priority, _NullMeansDefault] = 0
    run_at: RunAt | None = None
    delay: Annotated[Delay | None, Field(description="seconds; not with run_at")] = None
    max_attempts: Annotated[MaxAttempts, _NullMeansDefault] = DEFAULT_MAX_ATTEMPTS
    idempotency_key: IdempotencyKey | None = None
    on_parent_failure: Annotated[
        OnParentFailure, _NullMeansDefault, Field(description=_ON_PARENT_FAILURE)
    ] = "cancel"
    unique_key: UniqueKey | None = None
    on_conflict: Annotated[OnConflict, _NullMeansDefault] = "keep"

    @model_validator(mode="before")
    @classmethod
    def _absent_and_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """Null is absent; an absent queue or budget is the registered task's (see parse)."""
        if not isinstance(data, Mapping):
            return data
        given = {name: value for name, value in data.items() if value is not None}
        defaults: Defaults | None = (info.context or {}).get("defaults")
        task = given.get("task")
        if defaults is not None and isinstance(task, str) and (known := defaults(task)):
            given.setdefault("queue", known.queue)
            given.setdefault("max_attempts", known.max_attempts)
        return given

    @field_validator("delay")
    @classmethod
    def _not_with_run_at(cls, delay: float, info: ValidationInfo) -> float:
        if info.data.get("run_at") is not None:
            raise _refuse("give run_at or delay, not both")
        return delay

    @field_validator("on_conflict")
    @classmethod
    def _with_unique_key(cls, on_conflict: str, info: ValidationInfo) -> str:
        if on_conflict == "replace" and info.data.get("unique_key") is None:
            raise _refuse("replace applies to a job with a unique_key")
        return on_conflict

    def due(self, now: datetime) -> datetime:
        """When the job may first run, given the database's `now`: run_at, or `delay`
        seconds after it (never a host's clock, which may be off), or at once."""
        if self.run_at is not None:
            return self.run_at.astimezone(now.tzinfo)
        return now + timedelta(seconds=self.delay) if self.delay else now

    @cached_property
    def payload_json(self) -> str:
        return _PAYLOAD_ENCODER.encode(self.payload) if self.payload else "{}"

    @property
    def stored_payload(self) -> dict[str, Any]:
        """The payload as the database will give it back, without asking it (a batch
        COPYied into the jobs table gets nothing back): jsonb orders keys, and writes a
        float as its decimal digits, so 1e+23 reads back as an integer."""
        return _as_read_back(self.payload) if self.payload else {}

    def same_request_as(self, other: JobFields) -> bool:
        """Whether `other` replays this request: the same task, queue and payload, the
        payloads compared as PostgreSQL compares jsonb (so `true` is not `1`, though
        Python says it is, and `1` is `1.0`)."""
        return (self.task, self.queue) == (other.task, other.queue) and _as_jsonb(
            self.payload
        ) == _as_jsonb(other.payload)


class JobRequest(JobFields):
    """A request to enqueue one job: the HTTP body's fields, and enqueue()'s arguments."""

    after: Annotated[
        list[JobId] | None,
        Field(
            min_length=1,
            max_length=MAX_PARENTS,
            description="ids of stored jobs it runs after: it waits in the state `waiting` "
            "until every one of them completed",
        ),
    ] = None

    @field_validator("after")
    @classmethod
    def _parents_once(cls, after: list[int] | None) -> list[int] | None:
        return _once(after)


Ref = Annotated[
    StrictStr,
    Field(min_length=1, max_length=MAX_REF, pattern=NO_NUL.pattern),
]


class WorkflowJob(JobFields):
    """A job of a workflow: named by a `ref` that the `after` of later jobs may give."""

    ref: Annotated[Ref, Field(description="unique within the workflow")]
    after: Annotated[
        list[Ref | JobId] | None,
        Field(
            min_length=1,
            max_length=MAX_PARENTS,
            description="refs of jobs of the workflow (strings) and ids of stored jobs "
            "(integers) it runs after",
        ),
    ] = None

    @field_validator("after")
    @classmethod
    def _parents_once(cls, after: list[str | int] | None) -> list[str | int] | None:
        return _once(after)

    @field_validator("idempotency_key")
    @classmethod
    def _no_idempotency_key(cls, key: str | None) -> str | None:
        if key is not None:
            raise _refuse("is not taken inside a workflow (a replayed job could not be waited for)")
        return key

    @field_validator("unique_key")
    @classmethod
    def _no_unique_key(cls, key: str | None) -> str | None:
        if key is not None:
            raise _refuse(
                "is not taken inside a workflow (a job not stored could not be waited for)"
            )
        return key


class WorkflowRequest(BaseModel):
    """A request to store a workflow: its jobs and the edges between them, all or none."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    jobs: Annotated[list[WorkflowJob], Field(min_length=1, max_length=MAX_BATCH)]


# A workflow from Python (Client.enqueue_workflow, the canvas) may be larger than a body.
_WORKFLOW_JOBS = TypeAdapter(
    Annotated[list[WorkflowJob], Field(min_length=1, max_length=MAX_WORKFLOW)],
    config=ConfigDict(defer_build=True),
)


@dataclass(frozen=True)
class PlannedJob:
    """A job of a workflow, in the order of storing: each after every parent it has there."""

    request: JobFields
    ref: str
    place: int  # its index in the request, for error messages and answers
    after: tuple[str | int, ...]  # as given
    stored_parents: tuple[int, ...]  # ids of stored jobs
    parents_here: tuple[int, ...]  # indexes in the plan of its parents in the workflow


def plan_workflow(body: Any, *, defaults: Defaults | None = None) -> list[PlannedJob]:
    """A workflow body `{"jobs": [...]}` in an order to store it, every parent before its
    children; InvalidJob naming `jobs[2].ref` (a ref given twice) or `jobs[3].after[0]` (a
    ref no job has, or one that closes a cycle)."""
    workflow: WorkflowRequest = _validated(WorkflowRequest, body, "", defaults)
    return plan(workflow.jobs, "jobs")


def plan_workflow_jobs(
    jobs: Sequence[Any], *, defaults: Defaults | None = None
) -> list[PlannedJob]:
    """plan_workflow for Client.enqueue_workflow's jobs (up to MAX_WORKFLOW of them); errors
    name `jobs[3].after[0]`."""
    try:
        checked = _WORKFLOW_JOBS.validate_python(jobs, context={"defaults": defaults})
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc, "jobs")) from None
    return plan(checked, "jobs")


def plan(jobs: Sequence[WorkflowJob], field: str) -> list[PlannedJob]:
    """Kahn's topological order, the request's order among jobs free to go (so a body
    already in order is stored as given)."""
    errors: list[FieldError] = []
    places: dict[str, int] = {}
    for place, job in enumerate(jobs):
        if places.setdefault(job.ref, place) != place:
            errors.append(FieldError(f"{field}[{place}].ref", f"{job.ref!r} is given twice"))
    children: dict[int, list[int]] = {place: [] for place in range(len(jobs))}
    blocking = [0] * len(jobs)
    for place, job in enumerate(jobs):
        for n, parent in enumerate(job.after or ()):
            if isinstance(parent, int):
                continue
            if parent not in places:
                errors.append(
                    FieldError(f"{field}[{place}].after[{n}]", f"no job has ref {parent!r}")
                )
            else:
                children[places[parent]].append(place)
                blocking[place] += 1
    if errors:
        raise InvalidJob(errors)
    free = [place for place in range(len(jobs)) if blocking[place] == 0]
    heapq.heapify(free)
    order: list[int] = []
    while free:
        place = heapq.heappop(free)
        order.append(place)
        for child in children[place]:
            blocking[child] -= 1
            if blocking[child] == 0:
                heapq.heappush(free, child)
    if len(order) < len(jobs):
        raise InvalidJob([_cycle(jobs, places, blocking, field)])
    rank = {place: n for n, place in enumerate(order)}
    return [
        PlannedJob(
            request=jobs[place],
            ref=jobs[place].ref,
            place=place,
            after=tuple(jobs[place].after or ()),
            stored_parents=tuple(p for p in jobs[place].after or () if isinstance(p, int)),
            parents_here=tuple(
                rank[places[p]] for p in jobs[place].after or () if isinstance(p, str)
            ),
        )
        for place in order
    ]


def _cycle(
    jobs: Sequence[WorkflowJob], places: dict[str, int], blocking: list[int], field: str
) -> FieldError:
    """A job on a cycle: from any job left waiting, parents left waiting lead into one."""
    place = min(place for place in range(len(jobs)) if blocking[place] > 0)
    seen: set[int] = set()
    while place not in seen:
        seen.add(place)
        place = next(
            places[p]
            for p in jobs[place].after or ()
            if isinstance(p, str) and blocking[places[p]] > 0
        )
    return FieldError(f"{field}[{place}].after", "makes a cycle: the job would wait for itself")


class JobBatch(BaseModel):
    """A request to enqueue many jobs in one transaction: all of them, or none."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    jobs: Annotated[list[JobRequest], Field(min_length=1, max_length=MAX_BATCH)]


_JOB_LIST = TypeAdapter(list[JobRequest], config=ConfigDict(defer_build=True))
M = TypeVar("M", bound=BaseModel)


def parse_request(fields: Any, *, prefix: str = "", defaults: Defaults | None = None) -> JobRequest:
    """Validate one job request, or raise InvalidJob naming every bad field.

    `defaults` comes from the layer that knows the tasks: a job submitted by name
    then lands on its task's queue, with its task's budget, unless it names others.
    """
    return _validated(JobRequest, fields, prefix, defaults)


def parse_batch(body: Any, *, defaults: Defaults | None = None) -> list[JobRequest]:
    """The jobs of a batch body `{"jobs": [...]}`; InvalidJob names `jobs[3].priority`."""
    batch: JobBatch = _validated(JobBatch, body, "", defaults)
    return batch.jobs


def parse_requests(specs: Sequence[Any], *, defaults: Defaults | None = None) -> list[JobRequest]:
    """Many job requests (Client.enqueue_many's specs); InvalidJob names `[3].priority`."""
    try:
        return _JOB_LIST.validate_python(specs, context={"defaults": defaults})
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc)) from None


def _validated(model: type[M], data: Any, prefix: str, defaults: Defaults | None) -> M:
    try:
        return model.model_validate(data, context={"defaults": defaults})
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc, prefix)) from None


# -- queries ----------------------------------------------------------------------------------


class JobFilter(BaseModel):
    """Which jobs to list: GET /jobs, Client.list, `errands jobs list`, the dashboard."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    state: JobState | None = None
    queue: QueueName | None = None
    task: TaskName | None = None
    limit: ListLimit = DEFAULT_LIST_LIMIT
    after: Annotated[JobId | None, Field(description="next_after of the previous page")] = None


class JobWait(BaseModel):
    """GET /jobs/{id}?wait=SECONDS: a long poll."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    wait: Annotated[
        Wait | None,
        Field(
            description="seconds to wait for the job to be completed, dead or cancelled before "
            "answering; the answer is the job as it is then, finished or not"
        ),
    ] = None


class QueueLimits(BaseModel):
    """PATCH /queues/{name}, `errands queues set`: a field given sets that limit, null removes
    it, and a field left out leaves it as it is."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    concurrency: Concurrency | None = None
    rate: RateText | None = None

    def changes(self) -> dict[Kind, int | Rate | None]:
        """The limits to set (a value) or remove (None), by kind."""
        kinds: tuple[Kind, ...] = ("concurrency", "rate")
        return {kind: getattr(self, kind) for kind in kinds if kind in self.model_fields_set}


class NoQuery(BaseModel):
    """The query of an endpoint that takes no parameter: any is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def job_id_of_text(text: str) -> int | None:
    """A job id in a path or a search box: ASCII digits within a bigint, else None."""
    if not INTEGER_TEXT.fullmatch(text) or text.startswith("-"):
        return None
    number = int(text)
    return number if 1 <= number <= MAX_JOB_ID else None


# -- errors -----------------------------------------------------------------------------------

# pydantic's words for the problems every form shares, in the words errands has always used.
_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "is required",
    "model_type": "must be a dict (a JSON object) with the fields of a job",
    "model_attributes_type": "must be a dict (a JSON object) with the fields of a job",
    "dict_type": "must be a dict (a JSON object)",
    "list_type": "must be a list",
    "int_type": "must be an integer",
    "string_type": "must be a string",
    "string_unicode": "must be valid Unicode (a lone surrogate is not)",
    "string_pattern_mismatch": "must match {pattern}",
    "string_too_short": "must be at least {min_length} characters long",
    "string_too_long": "must be at most {max_length} characters long",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "too_short": "must hold at least {min_length} item(s)",
    "too_long": "must hold at most {max_length} item(s)",
    "enum": "must be one of {expected}",
}


def field_errors(
    exc: ValidationError, prefix: str = "", unknown: str = "unknown field"
) -> list[FieldError]:
    """Each problem of `exc`, named as the HTTP body names the field: `jobs[3].priority`."""
    messages = {**_MESSAGES, "extra_forbidden": unknown}
    return [
        FieldError(
            _name(prefix, error["loc"]),
            messages[error["type"]].format(**error.get("ctx", {}))
            if error["type"] in messages
            else error["msg"],
        )
        for error in exc.errors(include_url=False, include_input=False)
    ]


def _name(prefix: str, loc: tuple[int | str, ...]) -> str:
    """`prefix` and `loc` as one field name: ("jobs", 3, "priority") is jobs[3].priority."""
    name = prefix.removesuffix(".")
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else part
    return name or "body"


# -- helpers ----------------------------------------------------------------------------------


def _is_unicode(text: str) -> bool:
    """JSON may carry lone surrogates ("\\ud800"); UTF-8, and so PostgreSQL, cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit`; iterative, so no depth can crash it."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            item = item.values()
        elif not isinstance(item, list | tuple):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False


def _as_read_back(value: Any) -> Any:
    """A JSON value as PostgreSQL's jsonb writes it out and json.loads reads it again:
    object keys shortest first, then by their UTF-8 bytes; a float whose repr has an
    exponent upwards (1e+16 and beyond, all integers) as the integer it is; -0.0 as 0.0.
    A float written with digits, or with an exponent downwards, reads back as itself."""
    if isinstance(value, dict):
        return {key: _as_read_back(value[key]) for key in sorted(value, key=_jsonb_key_order)}
    if isinstance(value, list):
        return [_as_read_back(item) for item in value]
    if isinstance(value, float):
        text = repr(value)
        if "e+" in text:
            return int(Decimal(text))
        return 0.0 if value == 0 else value
    return value


def _jsonb_key_order(key: str) -> tuple[int, bytes]:
    encoded = key.encode()
    return len(encoded), encoded


def _as_jsonb(value: Any) -> Any:
    """`value` as jsonb compares it: numbers by value, never equal to a boolean."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value), value)
    if isinstance(value, int | float):
        return (Decimal, Decimal(repr(value)))  # repr: the digits json.dumps writes
    if isinstance(value, Mapping):
        return {key: _as_jsonb(item) for key, item in value.items()}
    return tuple(_as_jsonb(item) for item in value)
