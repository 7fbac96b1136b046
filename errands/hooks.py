"""Hooks: your functions, called by errands when a job is enqueued and around each attempt.

    from errands import hooks

    @hooks.on_enqueue
    def count(job: errands.Job) -> None: ...

    @hooks.before_job
    def starting(job: errands.Job) -> None: ...

    @hooks.after_job
    def ended(job: errands.Job, outcome: hooks.Outcome) -> None: ...

They are per process, like Celery's signals: a hook registered by a module
runs in the processes that import it (a worker imports the task modules, so a
hook registered there runs in every worker). Each is also a plain function
(`hooks.after_job(ended)`), and `hooks.remove(ended)` takes one away. A hook
that raises is logged and ignored: it never fails the enqueue or the job.

Where each fires (docs/guides/hooks.md):

* `on_enqueue(job)` — once per job this process stores: Client and
  AsyncClient (enqueue, enqueue_many, Task.enqueue/aenqueue), the HTTP API's
  POST /jobs and /jobs/batch (in the API process), periodic ticks (in the
  scheduler); after the job's row is written, inside the caller's transaction
  when `conn=` gave one. Not for an idempotent replay, which stores nothing,
  nor while errands.testing captures jobs.
* `before_job(job)` and `after_job(job, outcome)` — in the worker, around
  every attempt, on the thread that runs it (the worker's event loop for an
  `async def` task), with `errands.current_job()` set and the attempt's
  OpenTelemetry span current. `after_job` runs when the task has returned or
  raised, before the worker writes the outcome (so `outcome.state` is what the
  worker is about to write, unless the attempt's lease was lost meanwhile).

Hooks must be quick: they run on the enqueue's or the job's own path, and a
blocking hook on the event loop stalls every coroutine of its worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from errands.log import get_logger
from errands.queue.jobs import Job, JobState

__all__ = ["Outcome", "after_job", "before_job", "on_enqueue", "remove"]

JobHook = Callable[[Job], object]
AfterJobHook = Callable[[Job, "Outcome"], object]
H = TypeVar("H", bound=Callable[..., object])

_log = get_logger("errands.hooks")


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as `after_job` hooks see it."""

    state: JobState  # what the worker writes: COMPLETED, FAILED (retried), DEAD, PENDING (Retry)
    seconds: float  # the task's running time
    result: Any = None  # what the task returned (COMPLETED)
    error: BaseException | None = None  # what it raised (FAILED, DEAD; PENDING: errands.Retry)


class _Registry:
    """The hooks of this process; read without a lock (tuples, replaced whole on change)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.on_enqueue: tuple[JobHook, ...] = ()
        self.before_job: tuple[JobHook, ...] = ()
        self.after_job: tuple[AfterJobHook, ...] = ()


_hooks = _Registry()


def on_enqueue(hook: H) -> H:
    """Call `hook(job)` for every job this process stores (a decorator, or call it)."""
    with _hooks.lock:
        _hooks.on_enqueue = (*_hooks.on_enqueue, hook)
    return hook


def before_job(hook: H) -> H:
    """Call `hook(job)` before every attempt a worker of this process starts."""
    with _hooks.lock:
        _hooks.before_job = (*_hooks.before_job, hook)
    return hook


def after_job(hook: H) -> H:
    """Call `hook(job, outcome)` after every attempt a worker of this process ran."""
    with _hooks.lock:
        _hooks.after_job = (*_hooks.after_job, hook)
    return hook


def remove(hook: Callable[..., object]) -> None:
    """Unregister `hook` from whichever hooks it was registered as."""
    with _hooks.lock:
        _hooks.on_enqueue = tuple(h for h in _hooks.on_enqueue if h is not hook)
        _hooks.before_job = tuple(h for h in _hooks.before_job if h is not hook)
        _hooks.after_job = tuple(h for h in _hooks.after_job if h is not hook)


# -- what errands calls -----------------------------------------------------------------------


def enqueued(jobs: Iterable[Job]) -> None:
    """Jobs were stored (replays left out by the caller)."""
    hooks = _hooks.on_enqueue
    if hooks:
        for job in jobs:
            for hook in hooks:
                _call(hook, job)


def starting(job: Job) -> None:
    for hook in _hooks.before_job:
        _call(hook, job)


def wants_outcomes() -> bool:
    """Whether any after_job hook is registered (the worker builds an Outcome only then)."""
    return bool(_hooks.after_job)


def ended(job: Job, outcome: Outcome) -> None:
    for hook in _hooks.after_job:
        _call(hook, job, outcome)


def _call(hook: Callable[..., object], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        _log.exception("a hook raised; ignored", hook=_name(hook))


def _name(hook: Callable[..., object]) -> str:
    module = getattr(hook, "__module__", None) or "?"
    return f"{module}.{getattr(hook, '__qualname__', repr(hook))}"
