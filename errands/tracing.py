"""OpenTelemetry: a job's attempts continue the trace that enqueued it (extra `errands[otel]`).

With opentelemetry-api installed and a tracer provider set in the process
(docs/guides/opentelemetry.md), every enqueue makes a producer span `send
{queue}` and stores its W3C trace context (`traceparent`, `tracestate`) with the
job, and each attempt runs in a consumer span `process {queue}` whose parent is
that producer span, with the messaging semantic conventions' attributes. A
periodic tick's job starts a trace of its own, linked to the scheduler's span
for the tick. Without the package, or without a provider, nothing is made and
nothing stored: each entry point returns at its first check.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from errands.queue.jobs import Job, JobState

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext, Tracer

SYSTEM = "errands"
# The messaging semantic conventions' attributes (names as the conventions write them).
_SYSTEM = "messaging.system"
_DESTINATION = "messaging.destination.name"
_MESSAGE_ID = "messaging.message.id"
_OPERATION_TYPE = "messaging.operation.type"
_OPERATION_NAME = "messaging.operation.name"
_BATCH_COUNT = "messaging.batch.message_count"

# Set by `tick`: the producer span of the enqueue inside starts a new trace linked to it.
_link_to: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar(
    "errands_trace_link", default=None
)
_tracers: dict[int, Tracer] = {}


def enabled() -> bool:
    """Whether this process traces: opentelemetry is installed and a tracer provider is set."""
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _tracer() -> Tracer:
    provider = trace.get_tracer_provider()
    tracer = _tracers.get(id(provider))
    if tracer is None:
        tracer = _tracers[id(provider)] = provider.get_tracer(SYSTEM)
    return tracer


def flush(timeout_seconds: float = 2.0) -> None:
    """Export the spans a batching processor still holds (a child, before `os._exit`)."""
    if enabled():
        force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
        if force_flush is not None:
            force_flush(int(timeout_seconds * 1000))


# -- enqueueing ---------------------------------------------------------------------------------


class Sending:
    """The producer span of one enqueue (one job, or a batch): its context goes with the jobs."""

    def __init__(self, span: Span) -> None:
        self.span = span
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
        self.trace_context = json.dumps(carrier)  # as the jobs store it (jsonb)

    def sent(self, jobs: list[Job], created: int) -> None:
        if len(jobs) == 1:
            self.span.set_attribute(_MESSAGE_ID, str(jobs[0].id))
        else:
            self.span.set_attribute(_BATCH_COUNT, len(jobs))
        if created < len(jobs):
            self.span.set_attribute("errands.idempotent_replays", len(jobs) - created)


@contextmanager
def sending(queues: list[str]) -> Iterator[Sending | None]:
    """A producer span `send {queue}` around an enqueue of jobs to `queues`; None when off.

    A child of the current span, or, inside `tick`, the root of a new trace linked to
    the scheduler's span.
    """
    if not enabled():
        yield None
        return
    distinct = sorted(set(queues))
    attributes: dict[str, Any] = {
        _SYSTEM: SYSTEM,
        _OPERATION_TYPE: "send",
        _OPERATION_NAME: "send",
    }
    if len(distinct) == 1:
        attributes[_DESTINATION] = distinct[0]
    link = _link_to.get()
    span = _tracer().start_span(
        "send " + distinct[0] if len(distinct) == 1 else "send",
        context=otel_context.Context() if link is not None else None,
        kind=trace.SpanKind.PRODUCER,
        attributes=attributes,
        links=[trace.Link(link)] if link is not None else None,
    )
    try:
        yield Sending(span)
    except BaseException as exc:
        _failed(span, exc)
        raise
    finally:
        span.end()


@contextmanager
def continuing(headers: Mapping[str, str]) -> Iterator[None]:
    """Make the trace context of an HTTP request's headers (`traceparent`) the current one."""
    if not enabled():
        yield
        return
    token = otel_context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def tick(schedule: str, tick_rfc3339: str) -> Iterator[None]:
    """The scheduler's span for enqueueing one tick; the tick's job starts a trace linked to it."""
    if not enabled():
        yield
        return
    with _tracer().start_as_current_span(
        f"tick {schedule}",
        kind=trace.SpanKind.INTERNAL,
        attributes={_SYSTEM: SYSTEM, "errands.schedule": schedule, "errands.tick": tick_rfc3339},
    ) as span:
        token = _link_to.set(span.get_span_context())
        try:
            yield
        finally:
            _link_to.reset(token)


# -- running ------------------------------------------------------------------------------------


class Processing:
    """The consumer span `process {queue}` of one attempt, current while the task runs."""

    def __init__(self, job: Job) -> None:
        self._job = job
        self._span: Span | None = None
        self._token: object = None
        self._ended = False

    def __enter__(self) -> Processing:
        job = self._job
        parent = (
            TraceContextTextMapPropagator().extract(job.trace_context)
            if job.trace_context
            else otel_context.Context()  # enqueued untraced: a trace of its own
        )
        self._span = _tracer().start_span(
            f"process {job.queue}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                _SYSTEM: SYSTEM,
                _DESTINATION: job.queue,
                _MESSAGE_ID: str(job.id),
                _OPERATION_TYPE: "process",
                _OPERATION_NAME: "process",
                "errands.task": job.task,
                "errands.attempt": job.attempts,
            },
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def ended(self, state: JobState, error: BaseException | None) -> None:
        """How the attempt ended: its outcome's state, and what the task raised."""
        assert self._span is not None
        self._ended = True
        self._span.set_attribute("errands.outcome", state.value)
        if error is not None and state is not JobState.PENDING:
            _failed(self._span, error)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._span is not None
        if exc is not None and not self._ended:  # not an outcome: errands' own failure
            _failed(self._span, exc)
        otel_context.detach(self._token)  # type: ignore[arg-type]
        self._span.end()


class _NotTraced:
    """Processing when tracing is off: nothing at all."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOT_TRACED = _NotTraced()


def processing(job: Job) -> Processing | _NotTraced:
    """`with processing(job) as span:` around an attempt; `span` is None when tracing is off."""
    return Processing(job) if enabled() else _NOT_TRACED


def _failed(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
