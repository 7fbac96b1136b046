"""The errands task that runs Django tasks in the worker.

Every Django task is enqueued as a job of one errands task, `django.tasks.run`,
whose payload names the Django task (its import path), its arguments and the
backend that enqueued it. `manage.py errands_worker` loads this module in each
worker, where Django is set up already (the workers are forked from the
command's process).

Around each attempt, as Django does around a request: database connections
past CONN_MAX_AGE or broken are closed, and DEBUG's query log is cleared; the
task_started and task_finished signals are sent in the worker, with the
attempt's TaskResult (its error, if it raised; its return value, if not).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, reset_queries
from django.utils import timezone

import errands
from errands.contrib.django.backend import RUN, backend_named
from errands.contrib.django.compat import (
    InvalidTask,
    Task,
    TaskContext,
    TaskResultStatus,
    task_finished,
    task_started,
)
from errands.contrib.django.results import django_task_at, error_of, new_result


@errands.task(RUN)
def run(task_path: str, args: list[Any], kwargs: dict[str, Any], backend: str) -> Any:
    """Run one attempt of the Django task at `task_path`; what it raises fails the attempt."""
    job = errands.current_job()
    task = _django_task(task_path, backend, job.queue)
    now = timezone.now()
    result = new_result(
        task,
        str(job.id),
        TaskResultStatus.RUNNING,
        args,
        kwargs,
        started_at=now,
        last_attempted_at=now,
        worker_ids=[""] * job.attempt,  # Django counts attempts by workers; see results.py
    )
    sender = type(task.get_backend())
    _tidy_connections()
    try:
        task_started.send(sender=sender, task_result=result)
        context = [TaskContext(task_result=result)] if task.takes_context else []
        value = task.call(*context, *result.args, **result.kwargs)
    except errands.Retry:
        _finish(result, TaskResultStatus.READY, sender)  # rescheduled: not a failure
        raise
    except (Exception, SystemExit) as exc:  # as errands counts a task's failure
        result.errors.append(error_of(exc))
        _finish(result, TaskResultStatus.FAILED, sender)
        raise
    else:
        object.__setattr__(result, "_return_value", value)
        _finish(result, TaskResultStatus.SUCCESSFUL, sender)
        return value
    finally:
        _tidy_connections()


def _django_task(task_path: str, backend: str, queue: str) -> Any:
    """The Django task a job names; anything else fails the job for good.

    The job may come from anyone who can enqueue (the HTTP API, say): only a
    Django Task, sent through an errands backend, ever runs, and no module outside
    the project is imported to find out (django_task_at).
    """
    if not isinstance(task_path, str) or not isinstance(backend, str):
        raise errands.Fail("the payload's task_path and backend must be strings")
    try:
        backend_named(backend)
        task = django_task_at(task_path)
    except (ImproperlyConfigured, ImportError) as exc:
        raise errands.Fail(f"cannot run the Django task {task_path!r}: {exc}") from exc
    if not isinstance(task, Task) or task.module_path != task_path:
        raise errands.Fail(f"{task_path!r} is not a Django task (made by @task)")
    if (task.queue_name, task.backend) == (queue, backend):
        return task
    try:  # as enqueued (`task.using(...)`): the job's queue and backend, not the defaults
        return task.using(queue_name=queue, backend=backend)
    except InvalidTask as exc:
        raise errands.Fail(f"cannot run the Django task {task_path!r}: {exc}") from exc


def _finish(result: Any, status: Any, sender: type) -> None:
    object.__setattr__(result, "status", status)
    if status != TaskResultStatus.READY:
        object.__setattr__(result, "finished_at", timezone.now())
    task_finished.send(sender=sender, task_result=result)


def _tidy_connections() -> None:
    reset_queries()
    close_old_connections()
