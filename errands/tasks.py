"""Registering task functions, and what a running task knows about its job."""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

import psycopg

from errands import registry
from errands.async_client import AsyncClient, default_async_client
from errands.backoff import Backoff
from errands.client import Client, default_client
from errands.errors import (
    Cancelled,
    ConfigurationError,
    ErrandsError,
    FieldError,
    InvalidArgument,
    InvalidJob,
)
from errands.limits import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, MAX_LIMIT
from errands.queue.jobs import Job
from errands.queue.lease import encode_result
from errands.queue.requests import QUEUE_NAME, TASK_NAME, progress_json
from errands.queue.throttles import Rate, TaskLimits
from errands.workflows import Signature

NO_LIMITS = TaskLimits()
P = ParamSpec("P")
R = TypeVar("R")
ExceptionTypes = tuple[type[BaseException], ...]


class Task(Generic[P, R]):
    """A registered task: the function, the defaults of its jobs, and a way to enqueue them.

    Calling a Task calls the function. `name` and `func` are the registration;
    the other attributes are the defaults of the jobs that run it.
    """

    def __init__(
        self,
        name: str,
        func: Callable[P, R],
        *,
        queue: str = DEFAULT_QUEUE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        retry_on: ExceptionTypes = (BaseException,),
        no_retry_on: ExceptionTypes = (),
        limits: TaskLimits = NO_LIMITS,
    ) -> None:
        functools.update_wrapper(self, func)  # first: the function's __dict__ must not win
        self.name = name
        self.func = func
        self.queue = queue
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff = backoff
        self.retry_on = retry_on
        self.no_retry_on = no_retry_on
        self.limits = limits  # written to the database by every worker that registers it
        self.signature = inspect.signature(func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<errands.Task {self.name} ({self.qualified_name}) queue={self.queue}>"

    @property
    def qualified_name(self) -> str:
        """Where the function is defined: `module.qualname`."""
        return f"{self.func.__module__}.{self.func.__qualname__}"

    @property
    def is_async(self) -> bool:
        """An `async def` task: its jobs run on the worker's event loop."""
        return inspect.iscoroutinefunction(self.func)

    def enqueue(self, **payload: Any) -> Job:
        """Submit a job running this task with `payload` as its keyword arguments.

        The payload is checked against the function's signature first: a
        missing or unknown argument raises InvalidJob naming it, and nothing is
        stored.
        """
        return self.options().enqueue(**payload)

    async def aenqueue(self, **payload: Any) -> Job:
        """`enqueue` for coroutines, on an AsyncClient: `await task.aenqueue(**payload)`."""
        return await self.options().aenqueue(**payload)

    def options(
        self,
        *,
        queue: str | None = None,
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        after: Iterable[int] | None = None,
        on_parent_failure: str = "cancel",
        unique_key: str | None = None,
        on_conflict: str = "keep",
        client: Client | AsyncClient | None = None,
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None,
    ) -> TaskCall:
        """This task with options for the next enqueue: `task.options(delay=60).enqueue(...)`.

        `unique_key`: at most one job with the key is pending, failed or in progress;
        while one is, enqueue returns it, or with `on_conflict="replace"` gives a still
        pending one this payload and run_at (a debounce). `client` None uses the
        default client (the database of the environment, or of the worker running
        the calling task); `conn` enqueues inside the caller's transaction, as
        `Client.enqueue` does. For `aenqueue`, `client` is an AsyncClient and `conn`
        an AsyncConnection. `after` and `on_parent_failure` make the job wait for
        others (docs/guides/workflows.md).
        """
        return TaskCall(
            self,
            queue,
            priority,
            delay,
            run_at,
            max_attempts,
            idempotency_key,
            client,
            conn,
            None if after is None else tuple(after),
            on_parent_failure,
            unique_key,
            on_conflict,
        )

    def s(self, **payload: Any) -> Signature:
        """A signature: this task with `payload`, to run in a workflow (errands.chain,
        errands.group). The payload is checked against the function's signature now."""
        self.check_payload(payload)
        return Signature(self, payload)

    def payload_errors(self, payload: Mapping[str, Any]) -> list[FieldError]:
        """What keeps `payload` from being this function's keyword arguments, by argument."""
        params = self.signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        keyword = {name for name, p in params.items() if p.kind in _KEYWORD_KINDS}
        errors = [
            FieldError(f"payload.{name}", f"is not an argument of task {self.name}")
            for name in payload
            if name not in keyword and not takes_any
        ]
        errors += [
            FieldError(f"payload.{name}", f"is required by task {self.name}")
            for name, p in params.items()
            if p.kind in _KEYWORD_KINDS and p.default is p.empty and name not in payload
        ]
        return errors

    def check_payload(self, payload: Mapping[str, Any]) -> None:
        if errors := self.payload_errors(payload):
            raise InvalidJob(errors)

    def retries(self, exc: BaseException) -> bool:
        """Whether a failure raising `exc` is retried (budget permitting) or ends the job."""
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.no_retry_on)


_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class TaskCall:
    """A task with the options of one submission; `enqueue(**payload)` submits it."""

    task: Task[Any, Any]
    queue: str | None
    priority: int
    delay: float | timedelta | None
    run_at: datetime | None
    max_attempts: int | None
    idempotency_key: str | None
    client: Client | AsyncClient | None
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None
    after: tuple[int, ...] | None = None
    on_parent_failure: str = "cancel"
    unique_key: str | None = None
    on_conflict: str = "keep"

    def enqueue(self, **payload: Any) -> Job:
        self.task.check_payload(payload)
        client = self.client or default_client()
        if not isinstance(client, Client):
            raise InvalidArgument([FieldError("client", "an AsyncClient enqueues by aenqueue()")])
        return client.enqueue(self.task.name, payload, **self._options())

    async def aenqueue(self, **payload: Any) -> Job:
        """`enqueue` on an AsyncClient (the running loop's default when none was given)."""
        self.task.check_payload(payload)
        client = self.client or default_async_client()
        if not isinstance(client, AsyncClient):
            raise InvalidArgument([FieldError("client", "a Client enqueues by enqueue()")])
        return await client.enqueue(self.task.name, payload, **self._options())

    def _options(self) -> dict[str, Any]:
        """The enqueue arguments besides the payload; the client checks `conn`'s kind."""
        return {
            "queue": self.queue or self.task.queue,
            "priority": self.priority,
            "delay": self.delay,
            "run_at": self.run_at,
            "max_attempts": self.max_attempts or self.task.max_attempts,
            "idempotency_key": self.idempotency_key,
            "after": self.after,
            "on_parent_failure": self.on_parent_failure,
            "unique_key": self.unique_key,
            "on_conflict": self.on_conflict,
            "conn": self.conn,
        }


@overload
def task(func: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    name: str | None = None,
    *,
    queue: str = DEFAULT_QUEUE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | None = None,
    backoff: Backoff | None = None,
    retry_on: ExceptionTypes = (BaseException,),
    no_retry_on: ExceptionTypes = (),
    concurrency: int | None = None,
    concurrency_key: str | None = None,
    rate: str | None = None,
    rate_key: str | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...
def task(
    name: str | Callable[..., Any] | None = None,
    *,
    queue: str = DEFAULT_QUEUE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | None = None,
    backoff: Backoff | None = None,
    retry_on: ExceptionTypes = (BaseException,),
    no_retry_on: ExceptionTypes = (),
    concurrency: int | None = None,
    concurrency_key: str | None = None,
    rate: str | None = None,
    rate_key: str | None = None,
) -> Any:
    """Register a function as a task: `@errands.task`, `@errands.task("name", queue=...)`
    or `@errands.task(name="name", ...)`.

    Returns a `Task`, which still calls the function when called. The name
    defaults to the function's `__name__`; its keyword arguments are the job's
    payload. A failure is retried while the budget lasts when its exception is
    one of `retry_on` (default: any) and none of `no_retry_on`; any other ends
    the job `dead` at once, as `raise errands.Fail(...)` does.

    Limits hold across every worker and host (docs/guides/limits.md): at
    most `concurrency` jobs of the task in progress at once, and at most `rate`
    starts per period (`"30/m"`: any 60 seconds; units s, m, h); with
    `concurrency_key` or `rate_key`, the name of one of the function's arguments,
    separately for each value of it.
    """
    if callable(name):
        return task()(name)

    def register(func: Callable[P, R]) -> Task[P, R]:
        if isinstance(func, Task):
            raise ConfigurationError(f"{func.name} is registered as a task already")
        task_name = name or func.__name__
        registered_task = Task(
            task_name,
            func,
            queue=queue,
            max_attempts=max_attempts,
            timeout=timeout,
            backoff=backoff,
            retry_on=tuple(retry_on),
            no_retry_on=tuple(no_retry_on),
            limits=_limits(task_name, concurrency, concurrency_key, rate, rate_key),
        )
        _check(registered_task)
        registry.register(registered_task)
        return registered_task

    return register


def _limits(
    name: str,
    concurrency: int | None,
    concurrency_key: str | None,
    rate: str | None,
    rate_key: str | None,
) -> TaskLimits:
    """The limits `@errands.task` declares, checked; ConfigurationError naming the task."""
    if concurrency is not None and (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_LIMIT
    ):
        raise ConfigurationError(
            f"task {name}: concurrency must be an integer from 1 to {MAX_LIMIT}"
        )
    parsed = None
    if rate is not None:
        try:
            parsed = Rate.parse(rate)
        except ValueError as exc:
            raise ConfigurationError(f"task {name}: rate {rate!r} {exc}") from None
    for option, key, limit in (
        ("concurrency_key", concurrency_key, concurrency),
        ("rate_key", rate_key, rate),
    ):
        if key is not None and limit is None:
            raise ConfigurationError(f"task {name}: {option} needs {option.split('_')[0]}")
    return TaskLimits(concurrency, concurrency_key, parsed, rate_key)


def _check(spec: Task[Any, Any]) -> None:
    if not TASK_NAME.fullmatch(spec.name):  # fullmatch: `$` would let "name\n" by
        raise ConfigurationError(f"task name {spec.name!r} must match {TASK_NAME.pattern}")
    if not QUEUE_NAME.fullmatch(spec.queue):
        raise ConfigurationError(f"queue name {spec.queue!r} must match {QUEUE_NAME.pattern}")
    if spec.max_attempts < 1:
        raise ConfigurationError(f"task {spec.name}: max_attempts must be at least 1")
    if spec.timeout is not None and spec.timeout <= 0:
        raise ConfigurationError(f"task {spec.name}: timeout must be positive")
    for option in ("retry_on", "no_retry_on"):
        types = getattr(spec, option)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
            raise ConfigurationError(f"task {spec.name}: {option} must list exception types")
    params = spec.signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for option in ("concurrency_key", "rate_key"):
        key = getattr(spec.limits, option)
        if (
            key is not None
            and not takes_any
            and (key not in params or params[key].kind not in _KEYWORD_KINDS)
        ):
            raise ConfigurationError(
                f"task {spec.name}: {option} {key!r} is not a keyword argument of the function"
            )
    for name, param in params.items():
        if param.kind is param.POSITIONAL_ONLY and param.default is param.empty:
            raise ConfigurationError(
                f"task {spec.name}: argument {name!r} is positional-only, but a job's "
                "payload is passed as keyword arguments"
            )


class AttemptLink:
    """How a running task reaches the worker that runs it (errands/workers/attempt.py).

    This base stands for no worker at all: a task called directly or through
    errands.testing, where no cancel is ever requested and nothing is stored.
    """

    @property
    def cancel_requested(self) -> bool:
        return False

    def report_progress(self, progress_json: str) -> None:
        """Keep the progress for the worker to store (at most once a second)."""

    def complete_in(self, conn: psycopg.Connection[Any], result_json: str) -> None:
        """Complete the job in the transaction under way on `conn`."""

    async def complete_in_async(self, conn: psycopg.AsyncConnection[Any], result_json: str) -> None:
        """`complete_in` on an asyncio connection."""


@dataclass(frozen=True)
class CurrentJob:
    """What a task can learn about the job it is running, and how it talks to the queue."""

    id: int
    task: str
    queue: str
    attempt: int
    max_attempts: int
    payload: dict[str, Any]
    run_at: datetime  # when the job was due: a periodic job's tick
    link: AttemptLink = field(default_factory=AttemptLink, repr=False, compare=False)
    # Workflows: the ids of the jobs it ran after.
    parent_ids: tuple[int, ...] = ()

    @functools.cached_property
    def parents(self) -> dict[int, Any]:
        """The result of each job this one ran after, by id (docs/guides/workflows.md): read once,
        on first use, through the default client (the worker's database). A parent pruned
        since (a retry long after) is missing; a parent that ended dead or cancelled, when
        the job was told to run anyway, maps to None."""
        if not self.parent_ids:
            return {}
        return default_client().parent_results(self.parent_ids)

    @property
    def cancel_requested(self) -> bool:
        """Whether a cancel of the job was requested while it runs: stop soon (the job is
        recorded cancelled however the attempt ends). `check_cancelled()` raises instead."""
        return self.link.cancel_requested

    def set_progress(self, value: float | Mapping[str, Any]) -> None:
        """Report how far the task is: a number from 0 to 1, or a small JSON object (at most
        2 KiB). Call it as often as you like: the worker stores the latest value at most
        once a second, and with the job's completion. InvalidArgument for anything else."""
        self.link.report_progress(progress_json(value))

    @overload
    def complete_in(
        self, conn: psycopg.AsyncConnection[Any], result: Any = None
    ) -> Awaitable[None]: ...
    @overload
    def complete_in(self, conn: psycopg.Connection[Any], result: Any = None) -> None: ...
    def complete_in(self, conn: Any, result: Any = None) -> Awaitable[None] | None:
        """Complete the job inside the transaction under way on `conn`, so that it commits
        or rolls back with the application's own writes (README: Running jobs).

        Fenced like every write of the attempt: `LeaseLost` when the attempt no longer
        holds the job, `Cancelled` when a cancel was requested; either must roll the
        transaction back (let it propagate). Once it returns, the worker writes nothing
        more for this attempt if that transaction commits. On an AsyncConnection it
        returns an awaitable.
        """
        try:
            result_json = encode_result(result)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(
                [FieldError("result", f"must be JSON-serialisable without NaN ({exc})")]
            ) from None
        if isinstance(conn, psycopg.AsyncConnection):
            return self.link.complete_in_async(conn, result_json)
        if isinstance(conn, psycopg.Connection):
            self.link.complete_in(conn, result_json)
            return None
        raise InvalidArgument(
            [FieldError("conn", "must be a psycopg Connection or AsyncConnection")]
        )


_current: contextvars.ContextVar[CurrentJob] = contextvars.ContextVar("errands_current_job")


def current_job() -> CurrentJob:
    """The job the calling task is running; an ErrandsError outside a task."""
    try:
        return _current.get()
    except LookupError:
        raise ErrandsError("current_job() is only available inside a running task") from None


def check_cancelled() -> None:
    """Raise `errands.Cancelled` when a cancel of the running job was requested: call it
    between the steps of a long task that runs on a thread (a coroutine is cancelled
    for you). ErrandsError outside a task."""
    job = current_job()
    if job.cancel_requested:
        raise Cancelled(job.id)


@contextmanager
def running(job: CurrentJob) -> Iterator[None]:
    """Make `job` the current job for the code run inside the block."""
    token = _current.set(job)
    try:
        yield
    finally:
        _current.reset(token)
