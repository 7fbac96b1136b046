"""What a Django TaskResult says about an errands job: status, times, errors, attempts.

| errands job state | Django status |
|---|---|
| pending, failed (a retry is scheduled) | READY |
| in_progress | RUNNING |
| completed | SUCCESSFUL |
| dead, cancelled | FAILED |

Django defines no cancelled status; a cancelled job has no error of its own.
"""

from __future__ import annotations

import re
import sys
import traceback
from datetime import datetime
from typing import Any

from django.apps import apps
from django.conf import settings
from django.utils.module_loading import import_string

from errands import Job, JobState
from errands.contrib.django.compat import TaskError, TaskResult, TaskResultStatus

STATUSES = {
    JobState.WAITING: TaskResultStatus.READY,
    JobState.PENDING: TaskResultStatus.READY,
    JobState.FAILED: TaskResultStatus.READY,
    JobState.IN_PROGRESS: TaskResultStatus.RUNNING,
    JobState.COMPLETED: TaskResultStatus.SUCCESSFUL,
    JobState.DEAD: TaskResultStatus.FAILED,
    JobState.CANCELLED: TaskResultStatus.FAILED,
}
FINISHED = {TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED}
NO_TRACEBACK = "errands.ErrandsError"  # an attempt that ended without raising: its worker died
# The header of the exception a traceback ends with: "package.module.Class: message".
_EXCEPTION_HEADER = re.compile(r"([A-Za-z_][\w.]*)(?::|$)")
_TRACEBACK_START = "Traceback (most recent call last):"


def new_result(
    task: Any,
    result_id: str,
    status: Any,
    args: Any,
    kwargs: Any,
    *,
    enqueued_at: datetime | None = None,
    started_at: datetime | None = None,
    last_attempted_at: datetime | None = None,
    finished_at: datetime | None = None,
    errors: list[Any] | None = None,
    worker_ids: list[str] | None = None,
) -> Any:
    """A TaskResult; Django normalises `args` and `kwargs` to JSON types (TypeError if it can't)."""
    return TaskResult(
        task=task,
        id=result_id,
        status=status,
        enqueued_at=enqueued_at,
        started_at=started_at,
        last_attempted_at=last_attempted_at,
        finished_at=finished_at,
        args=args,
        kwargs=kwargs,
        backend=task.backend,
        errors=errors or [],
        worker_ids=worker_ids or [],
    )


def django_task_at(task_path: str) -> Any:
    """What `task_path` names, imported only from a module loaded already, or from the
    package of an installed app or of the settings.

    A job's payload may come from anyone who can enqueue (the HTTP API, say), and
    importing a module runs its code: a path into any other installed module is refused
    before it is imported (ImportError).
    """
    module = task_path.rpartition(".")[0]
    if module not in sys.modules and not _in_project(task_path):
        raise ImportError(
            f"{module or task_path!r} is not loaded, nor in an installed app or the "
            "settings' package"
        )
    return import_string(task_path)


def _in_project(task_path: str) -> bool:
    project = settings.SETTINGS_MODULE.rpartition(".")[0] if settings.SETTINGS_MODULE else ""
    in_settings_package = bool(project) and task_path.startswith(f"{project}.")
    return in_settings_package or apps.get_containing_app_config(task_path) is not None


def result_of(job: Job) -> Any:
    """The TaskResult of a job that runs a Django task (see `runner`), as stored now."""
    payload = job.payload
    task = django_task_at(payload["task_path"]).using(
        priority=job.priority, queue_name=job.queue, backend=payload["backend"]
    )
    status = STATUSES[job.state]
    failures = [entry for entry in job.errors if "retry_in" not in entry]  # Retry: no failure
    result = new_result(
        task,
        str(job.id),
        status,
        payload["args"],
        payload["kwargs"],
        enqueued_at=job.created_at,
        started_at=_first_start(job, failures),
        last_attempted_at=job.started_at,
        finished_at=job.finished_at if status in FINISHED else None,
        errors=[error_of_entry(entry) for entry in failures],
        worker_ids=_worker_ids(job, failures),
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", job.result)
    return result


def error_of(exc: BaseException) -> Any:
    """The TaskError of an exception a task raised."""
    kind = type(exc)
    return TaskError(
        exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
        traceback="".join(traceback.format_exception(exc)),
    )


def error_of_entry(entry: dict[str, Any]) -> Any:
    """The TaskError of one failed attempt in a job's error history.

    errands keeps the traceback of what the task raised; the exception's class
    is read from its last line, where Python prints `module.Class: message`
    (builtins without a module). An attempt without a traceback ended without
    raising (its worker died, or the task was not registered): its error text
    stands in, under `errands.ErrandsError`.
    """
    text = entry.get("traceback")
    if not text:
        return TaskError(exception_class_path=NO_TRACEBACK, traceback=str(entry.get("error", "")))
    return TaskError(exception_class_path=exception_path(text), traceback=text)


def exception_path(text: str) -> str:
    """The class path of the exception a formatted traceback ends with."""
    lines = text.splitlines()
    start = max((n for n, line in enumerate(lines) if line == _TRACEBACK_START), default=-1)
    for line in lines[start + 1 :]:
        if line.startswith(" "):
            continue  # a frame, its source line or a caret
        match = _EXCEPTION_HEADER.match(line)
        if match:
            path = match.group(1)
            return path if "." in path else f"builtins.{path}"
        break
    return NO_TRACEBACK


def _first_start(job: Job, failures: list[dict[str, Any]]) -> datetime | None:
    """When the first attempt started: errands' started_at is the latest attempt's."""
    for entry in failures:
        if entry.get("started_at"):
            return datetime.fromisoformat(entry["started_at"])
    return job.started_at


def _worker_ids(job: Job, failures: list[dict[str, Any]]) -> list[str]:
    """One entry per attempt started (Django counts attempts so).

    errands records the worker of an attempt that is running now (its lease
    owner) or that was lost with its worker; an attempt that ended otherwise
    is "" here.
    """
    known = {entry["attempt"]: entry["worker"] for entry in failures if entry.get("worker")}
    if job.lease_owner:
        known[job.attempts] = job.lease_owner
    return [known.get(attempt, "") for attempt in range(1, job.attempts + 1)]
