"""Running one job's task function and turning what happened into an outcome."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

from errands.errors import scrub
from errands.queue import Job, encode_result
from errands.queue.ticks import tick_of
from errands.tasks import CurrentJob, registered, registered_tasks, running


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


Outcome = Succeeded | Failed


def execute(job: Job) -> Outcome:
    """Call the job's task with its payload as keyword arguments; never raises."""
    started = time.monotonic()
    spec = registered(job.task)
    if spec is None:
        known = ", ".join(sorted(registered_tasks())) or "none"
        return Failed(
            f"task {job.task!r} is not registered in this worker (registered: {known}); "
            "retried in case a deploy is rolling out",
            None,
            time.monotonic() - started,
        )
    current = CurrentJob(
        job.id,
        job.task,
        job.queue,
        job.attempts,
        job.max_attempts,
        job.payload,
        tick_of(job.idempotency_key) or job.run_at,
    )
    try:
        with running(current):
            result = spec.func(**job.payload)
        result_json = encode_result(result)
    except (Exception, SystemExit) as exc:  # a task's sys.exit() is its failure, not ours
        # Stored with the job and logged: never the row a database error quotes.
        return Failed(
            scrub(_describe(exc), exc),
            scrub(traceback.format_exc(), exc),
            time.monotonic() - started,
            _where(exc),
        )
    return Succeeded(result_json, time.monotonic() - started)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _where(exc: BaseException) -> str | None:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    last = frames[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"
