"""Helpers for an application's tests: run a task inline, and capture what gets enqueued.

No daemon and no database are needed::

    from errands.testing import capture_jobs, run

    def test_signing_up_sends_a_welcome_email():
        with capture_jobs() as jobs:
            sign_up("ada@example.com")  # calls send_email.enqueue(to=..., subject=...)
        [job] = jobs.of(send_email)
        assert job.payload == {"to": "ada@example.com", "subject": "Welcome"}
        assert run(send_email, job.payload) == {"delivered": True}

`capture_jobs` records every job enqueued in the process (by `Task.enqueue`,
`Client.enqueue`, `Client.enqueue_many` or `Client.enqueue_workflow` and the canvas,
from any thread) after the same validation as a real enqueue, and stores nothing; a
workflow's jobs come with their `workflow_id` and `parents`, those with parents
`waiting`, as the database would store them. `run` calls a task the way
a worker does: payload checked against the signature and passed through JSON,
`errands.current_job()` set, a coroutine run to its end, the result returned
as the job would store it. What the task raises (`errands.Fail`,
`errands.Retry`, any error) reaches the test. No worker is there to talk to:
`current_job().set_progress()` and `complete_in()` check their arguments and
store nothing, and `cancel_requested` stays false.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from errands.client import recording
from errands.errors import ErrandsError
from errands.queue.jobs import Job, JobState
from errands.queue.lease import encode_result
from errands.queue.requests import JobFields, PlannedJob, parse_request
from errands.registry import registered
from errands.tasks import CurrentJob, Task, running

__all__ = ["CapturedJobs", "capture_jobs", "run", "run_async", "run_job"]


class CapturedJobs(list[Job]):
    """The jobs enqueued while capturing, in order, as they would have been stored (pending)."""

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def of(self, task: Task[Any, Any] | str) -> list[Job]:
        """The captured jobs of one task (a Task or its name)."""
        name = task if isinstance(task, str) else task.name
        return [job for job in self if job.task == name]

    def run_all(self) -> list[Any]:
        """Run every captured job inline, in order, then those they enqueue, until none is left.

        Returns their results. Jobs enqueued by the tasks are captured too, never stored.
        """
        results = []
        with recording(self.record):
            done = 0
            while done < len(self):
                results.append(run_job(self[done]))
                done += 1
        return results

    def record(
        self, requests: Sequence[JobFields], workflow: Sequence[PlannedJob] | None = None
    ) -> list[Job]:
        now = datetime.now(UTC)
        with self._lock:
            jobs = [_pending_job(next(self._ids), request, now) for request in requests]
            if workflow is not None:
                jobs = _as_workflow(jobs, workflow)
            self.extend(jobs)
        return jobs


@contextmanager
def capture_jobs() -> Iterator[CapturedJobs]:
    """Capture the jobs this process enqueues inside the block, instead of storing them."""
    jobs = CapturedJobs()
    with recording(jobs.record):
        yield jobs


def run(
    task: Task[Any, Any] | str,
    payload: Mapping[str, Any] | None = None,
    *,
    job_id: int = 1,
    attempt: int = 1,
    max_attempts: int | None = None,
    queue: str | None = None,
    run_at: datetime | None = None,
) -> Any:
    """Run `task` on `payload` in this thread, as a worker would, and return its stored result."""
    spec, current = _prepare(task, payload, job_id, attempt, max_attempts, queue, run_at)
    with running(current):
        result = spec.func(**current.payload)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    return _stored(result)


async def run_async(
    task: Task[Any, Any] | str,
    payload: Mapping[str, Any] | None = None,
    *,
    job_id: int = 1,
    attempt: int = 1,
    max_attempts: int | None = None,
    queue: str | None = None,
    run_at: datetime | None = None,
) -> Any:
    """`run` for a test that has an event loop running already (an `async def` test)."""
    spec, current = _prepare(task, payload, job_id, attempt, max_attempts, queue, run_at)
    with running(current):
        result = spec.func(**current.payload)
        if asyncio.iscoroutine(result):
            result = await result
    return _stored(result)


def run_job(job: Job) -> Any:
    """Run a job (a captured one, say) as its next attempt; returns its stored result."""
    return run(
        job.task,
        job.payload,
        job_id=job.id,
        attempt=job.attempts + 1,
        max_attempts=job.max_attempts,
        queue=job.queue,
        run_at=job.run_at,
    )


def _prepare(
    task: Task[Any, Any] | str,
    payload: Mapping[str, Any] | None,
    job_id: int,
    attempt: int,
    max_attempts: int | None,
    queue: str | None,
    run_at: datetime | None,
) -> tuple[Task[Any, Any], CurrentJob]:
    spec = registered(task) if isinstance(task, str) else task
    if spec is None:
        raise ErrandsError(f"task {task!r} is not registered (is its module imported?)")
    spec.check_payload(payload or {})
    # As stored: through JSON, so a test sees what a worker would pass.
    request = parse_request({"task": spec.name, "payload": payload or {}})
    current = CurrentJob(
        id=job_id,
        task=spec.name,
        queue=queue or spec.queue,
        attempt=attempt,
        max_attempts=max_attempts or spec.max_attempts,
        payload=request.payload,
        run_at=run_at or datetime.now(UTC),  # when it was due: a periodic job's tick
    )
    return spec, current


def _stored(result: Any) -> Any:
    """The result as the job would store it: a task returning something not JSON fails here too."""
    return json.loads(encode_result(result))


def _as_workflow(jobs: list[Job], planned: Sequence[PlannedJob]) -> list[Job]:
    """A workflow's jobs as stored: its first job's id as the workflow's, each job's parents
    (stored ones, then those of the workflow), and those with parents waiting."""
    workflow_id = jobs[0].id
    linked = []
    for job, plan in zip(jobs, planned, strict=True):
        parents = [*plan.stored_parents, *(jobs[place].id for place in plan.parents_here)]
        linked.append(
            replace(
                job,
                workflow_id=workflow_id,
                parents=parents or None,
                on_parent_failure=plan.request.on_parent_failure,
                state=JobState.WAITING if parents else JobState.PENDING,
            )
        )
    return linked


def _pending_job(job_id: int, request: JobFields, now: datetime) -> Job:
    return Job(
        id=job_id,
        queue=request.queue,
        task=request.task,
        payload=request.payload,
        state=JobState.PENDING,
        priority=request.priority,
        run_at=request.due(now),  # no database here: this process's clock stands in
        attempts=0,
        max_attempts=request.max_attempts,
        idempotency_key=request.idempotency_key,
        unique_key=request.unique_key,
        lease_owner=None,
        lease_expires_at=None,
        last_error=None,
        errors=[],
        result=None,
        created_at=now,
        started_at=None,
        finished_at=None,
        updated_at=now,
        cancel_requested_at=None,
        progress=None,
    )
