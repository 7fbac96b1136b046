"""Registering task functions, and what a running task knows about its job."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, overload

from errands.backoff import Backoff
from errands.errors import ConfigurationError, ErrandsError
from errands.queue.requests import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, QUEUE_NAME, TASK_NAME

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: the function and the defaults of the jobs that run it."""

    name: str
    func: Callable[..., Any]
    queue: str = DEFAULT_QUEUE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = None
    backoff: Backoff | None = None


_registry: dict[str, TaskSpec] = {}


@overload
def task(func: F, /) -> F: ...
@overload
def task(
    name: str | None = None,
    /,
    *,
    queue: str = DEFAULT_QUEUE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | None = None,
    backoff: Backoff | None = None,
) -> Callable[[F], F]: ...
def task(
    name: str | Callable[..., Any] | None = None,
    /,
    *,
    queue: str = DEFAULT_QUEUE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | None = None,
    backoff: Backoff | None = None,
) -> Any:
    """Register a function as a task: `@errands.task` or `@errands.task("name", queue=...)`.

    The function is returned unchanged, so it can still be called directly. Its
    name defaults to the function's `__name__`; its keyword arguments are the
    job's payload.
    """
    if callable(name):
        return task()(name)

    def register(func: F) -> F:
        spec = TaskSpec(name or func.__name__, func, queue, max_attempts, timeout, backoff)
        _check(spec)
        _registry[spec.name] = spec
        return func

    return register


def _check(spec: TaskSpec) -> None:
    if not TASK_NAME.fullmatch(spec.name):  # fullmatch: `$` would let "name\n" by
        raise ConfigurationError(f"task name {spec.name!r} must match {TASK_NAME.pattern}")
    if not QUEUE_NAME.fullmatch(spec.queue):
        raise ConfigurationError(f"queue name {spec.queue!r} must match {QUEUE_NAME.pattern}")
    if spec.max_attempts < 1:
        raise ConfigurationError(f"task {spec.name}: max_attempts must be at least 1")
    if spec.timeout is not None and spec.timeout <= 0:
        raise ConfigurationError(f"task {spec.name}: timeout must be positive")
    known = _registry.get(spec.name)
    if known and _qualified_name(known.func) != _qualified_name(spec.func):
        raise ConfigurationError(
            f"task name {spec.name!r} is registered twice: by {_qualified_name(known.func)} "
            f"and by {_qualified_name(spec.func)}"
        )


def _qualified_name(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def registered(name: str) -> TaskSpec | None:
    return _registry.get(name)


def registered_tasks() -> dict[str, TaskSpec]:
    return dict(_registry)


@dataclass(frozen=True)
class CurrentJob:
    """What a task can learn about the job it is running."""

    id: int
    task: str
    queue: str
    attempt: int
    max_attempts: int
    payload: dict[str, Any]
    run_at: datetime  # when the job was due: a periodic job's tick


_current: contextvars.ContextVar[CurrentJob] = contextvars.ContextVar("errands_current_job")


def current_job() -> CurrentJob:
    """The job the calling task is running; an ErrandsError outside a task."""
    try:
        return _current.get()
    except LookupError:
        raise ErrandsError("current_job() is only available inside a running task") from None


@contextmanager
def running(job: CurrentJob) -> Iterator[None]:
    """Make `job` the current job for the code run inside the block."""
    token = _current.set(job)
    try:
        yield
    finally:
        _current.reset(token)
