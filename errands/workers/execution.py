"""Running one job's task function and turning what happened into an outcome.

A plain function runs on a job thread (`execute`); an `async def` task runs as
a coroutine on the worker's event loop (`execute_async`), where its timeout
cancels it. What the task raises decides the outcome: `errands.Retry` asks to
run again later without counting a failure; `errands.Fail`, or an exception
the task does not retry (`retry_on`, `no_retry_on`), fails it for good; any
other error is an ordinary failure, retried while the budget lasts.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass
from typing import Any

from errands import hooks, tracing
from errands.errors import Cancelled, ErrandsError, Fail, Retry, scrub
from errands.queue.jobs import Job, JobState
from errands.queue.lease import encode_result
from errands.queue.ticks import tick_of
from errands.registry import registered, registered_tasks
from errands.tasks import AttemptLink, CurrentJob, Task, current_job, running


@dataclass(frozen=True)
class Succeeded:
    result_json: str
    seconds: float


@dataclass(frozen=True)
class Failed:
    error: str
    traceback: str | None
    seconds: float
    where: str | None = None  # the frame that raised: "path/to/module.py:12 in func"
    permanent: bool = False  # dead at once, whatever budget is left


@dataclass(frozen=True)
class Rescheduled:
    """The task raised errands.Retry: run again in `in_seconds`, no failure counted."""

    reason: str
    in_seconds: float
    seconds: float


Outcome = Succeeded | Failed | Rescheduled


def execute(job: Job, link: AttemptLink | None = None) -> Outcome:
    """Call the job's task with its payload as keyword arguments; never raises.

    Around the call: the attempt's span (errands/tracing.py) and the hooks
    (errands/hooks.py), with `errands.current_job()` set for both; `link` is how
    the task reaches its worker through it (none: no worker).
    """
    started = time.monotonic()
    spec = registered(job.task)
    with running(_current(job, link)), tracing.processing(job) as span:
        hooks.starting(job)
        if spec is None:
            return _ended(job, span, _unregistered(job, started), error=_not_registered(job))
        try:
            result = spec.func(**job.payload)
            outcome = Succeeded(encode_result(result), time.monotonic() - started)
        except (Exception, SystemExit) as exc:  # a task's sys.exit() is its failure, not ours
            return _ended(job, span, _raised(spec, exc, started), error=exc)
        return _ended(job, span, outcome, result=result)


async def execute_async(job: Job, link: AttemptLink | None = None) -> Outcome:
    """Await the job's coroutine task, cancelled past its timeout; never raises.

    A cancellation from outside (a cancel request, the attempt's lease ran out) goes through.
    """
    started = time.monotonic()
    spec = registered(job.task)
    with running(_current(job, link)), tracing.processing(job) as span:
        hooks.starting(job)
        if spec is None:
            return _ended(job, span, _unregistered(job, started), error=_not_registered(job))
        deadline = asyncio.timeout(spec.timeout)
        try:
            async with deadline:
                result = await spec.func(**job.payload)
            outcome = Succeeded(encode_result(result), time.monotonic() - started)
        except TimeoutError as exc:
            if not deadline.expired():
                return _ended(job, span, _raised(spec, exc, started), error=exc)  # the task's own
            error = (
                f"TimeoutError: the task ran past its timeout of {spec.timeout:g}s "
                "and was cancelled"
            )
            failed = Failed(error, traceback.format_exc(), time.monotonic() - started, _where(exc))
            return _ended(job, span, failed, error=exc)
        except (Exception, SystemExit) as exc:
            return _ended(job, span, _raised(spec, exc, started), error=exc)
        except asyncio.CancelledError as exc:
            cancelled = Failed("CancelledError", None, time.monotonic() - started)
            _ended(job, span, cancelled, error=exc)
            raise
        return _ended(job, span, outcome, result=result)


def _ended(
    job: Job,
    span: tracing.Processing | None,
    outcome: Outcome,
    *,
    result: Any = None,
    error: BaseException | None = None,
) -> Outcome:
    """Tell the attempt's span and the after_job hooks how it ended; the outcome."""
    if span is not None or hooks.wants_outcomes():
        state = _state_after(job, outcome)
        if span is not None:
            span.ended(state, error)
        hooks.ended(job, hooks.Outcome(state, outcome.seconds, result, error))
    return outcome


def _state_after(job: Job, outcome: Outcome) -> JobState:
    """The state the worker writes for this outcome (as the ending statements decide it: a
    cancel requested while the attempt ran makes it cancelled, whatever the outcome)."""
    if current_job().cancel_requested:
        return JobState.CANCELLED
    if isinstance(outcome, Succeeded):
        return JobState.COMPLETED
    if isinstance(outcome, Rescheduled):
        return JobState.PENDING
    dead = outcome.permanent or job.attempts >= job.max_attempts
    return JobState.DEAD if dead else JobState.FAILED


def is_async(job: Job) -> bool:
    """Whether the job runs on the event loop (its task is `async def`) rather than a thread."""
    spec = registered(job.task)
    return spec is not None and spec.is_async


def _current(job: Job, link: AttemptLink | None) -> CurrentJob:
    # A periodic job's tick stays its run_at even after a failed attempt moved run_at.
    due = tick_of(job.idempotency_key) or job.run_at
    return CurrentJob(
        job.id,
        job.task,
        job.queue,
        job.attempts,
        job.max_attempts,
        job.payload,
        due,
        link or AttemptLink(),
        tuple(job.parents or ()),
    )


def cancelled(seconds: float, before_start: bool = False) -> Failed:
    """The outcome of an attempt stopped by a cancel request (the job ends cancelled)."""
    when = "before it started" if before_start else "while it ran"
    return Failed(f"Cancelled: a cancel was requested {when}", None, seconds, permanent=True)


def _unregistered(job: Job, started: float) -> Failed:
    return Failed(str(_not_registered(job)), None, time.monotonic() - started)


def _not_registered(job: Job) -> ErrandsError:
    known = ", ".join(sorted(registered_tasks())) or "none"
    return ErrandsError(
        f"task {job.task!r} is not registered in this worker (registered: {known}); "
        "retried in case a deploy is rolling out"
    )


def _raised(spec: Task[Any, Any], exc: BaseException, started: float) -> Outcome:
    seconds = time.monotonic() - started
    if isinstance(exc, Retry):
        return Rescheduled(_describe(exc), exc.in_seconds, seconds)
    # Cancelled: the task heard a cancel request; the job ends cancelled, never retried.
    permanent = isinstance(exc, Fail | Cancelled) or not spec.retries(exc)
    # Stored with the job and logged: never the row a database error quotes.
    return Failed(
        scrub(_describe(exc), exc),
        scrub(traceback.format_exc(), exc),
        seconds,
        _where(exc),
        permanent,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _where(exc: BaseException) -> str | None:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    last = frames[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"
