"""The tasks registered in this process, by name: what its workers run, and where the jobs
it submits by name go.

Task modules fill it when they are imported (`@errands.task`); the Client and,
through the CLI that loaded the modules, the HTTP API read the defaults of a
task from it. It knows nothing of clients or workers, so everything may import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from errands.errors import ConfigurationError
from errands.queue.requests import TaskDefaults

if TYPE_CHECKING:
    from errands.tasks import Task

_tasks: dict[str, Task[Any, Any]] = {}


def register(task: Task[Any, Any]) -> None:
    """Add `task`; the same function registered again (a module imported twice) is fine."""
    known = _tasks.get(task.name)
    if known is not None and known.qualified_name != task.qualified_name:
        raise ConfigurationError(
            f"task name {task.name!r} is registered twice: by {known.qualified_name} "
            f"and by {task.qualified_name}"
        )
    _tasks[task.name] = task


def registered(name: str) -> Task[Any, Any] | None:
    return _tasks.get(name)


def registered_tasks() -> dict[str, Task[Any, Any]]:
    return dict(_tasks)


def task_defaults(name: str) -> TaskDefaults | None:
    """The queue and budget a job of task `name` gets when its request names none."""
    known = _tasks.get(name)
    return None if known is None else TaskDefaults(known.queue, known.max_attempts)
