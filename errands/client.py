"""`errands.Client`: submit and manage jobs from Python.

What it shares with `errands.AsyncClient` (errands/async_client.py) lives here
too, in `ClientCore` and the functions below it: the settings, the database's
URL, every argument checked and every request built before any I/O. The queue
operations themselves are steps (errands/queue/steps.py) that each client runs
on its own kind of connection.
"""

from __future__ import annotations

import builtins
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool
from pydantic import TypeAdapter, ValidationError

from errands.config import Settings
from errands.database import (
    configure,
    connect,
    pooling_options,
    resolve_url,
    with_dead_peer_detection,
)
from errands.errors import FieldError, InvalidArgument, InvalidJob, JobNotFound, scrub
from errands.queue import admin
from errands.queue.admin import Stats
from errands.queue.finished import FinishWatcher, is_finished
from errands.queue.jobs import Job, JobState
from errands.queue.requests import (
    JobFields,
    JobFilter,
    JobId,
    JobRequest,
    PlannedJob,
    field_errors,
    parse_request,
    parse_requests,
    plan_workflow_jobs,
)
from errands.queue.steps import run
from errands.queue.submit import enqueue_many_steps, enqueue_steps, store_workflow_steps
from errands.registry import task_defaults

# A connection idle for longer than this is checked (one empty round trip) before use,
# so that a database restart costs the caller a reconnection rather than an error,
# while a busy caller pays nothing.
IDLE_CHECK_SECONDS = 0.2
# Every connection of a Client: see the class's docstring.
_UNPREPARED = pooling_options(pgbouncer=True)
# How often `wait` reads the jobs it waits for, in case a finish notification was missed.
WAIT_POLL_SECONDS = 1.0
_last_used: weakref.WeakKeyDictionary[
    psycopg.Connection[Any] | psycopg.AsyncConnection[Any], float
] = weakref.WeakKeyDictionary()


def is_idle(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether a pooled connection has been idle long enough to be checked before use."""
    return time.monotonic() - _last_used.get(conn, 0.0) > IDLE_CHECK_SECONDS


def used(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """A pooled connection goes back to its pool now."""
    _last_used[conn] = time.monotonic()


def _check_if_idle(conn: psycopg.Connection[Any]) -> None:
    if is_idle(conn):
        ConnectionPool.check_connection(conn)


# What errands.testing records instead of storing: requests, with their workflow's plan when
# they are one (same order).
Recorder = Callable[[Sequence[JobFields], Sequence[PlannedJob] | None], list[Job]]
_JOB_ID: TypeAdapter[int] = TypeAdapter(JobId)


class _Process:
    """What the whole process shares: its default client, and a recorder while tests capture."""

    lock = threading.Lock()
    default: Client | None = None
    dsn: str | None = None  # the default client's: default AsyncClients use it too
    recorder: Recorder | None = None  # errands.testing.capture_jobs(): record, do not store


@contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    """Hand every job any Client enqueues in this process to `recorder` instead of storing it."""
    previous, _Process.recorder = _Process.recorder, recorder
    try:
        yield
    finally:
        _Process.recorder = previous


class ClientCore:
    """What Client and AsyncClient share: the settings, the database's URL, the finish watcher."""

    def __init__(self, dsn: str | None, max_connections: int) -> None:
        _refuse([_dsn_problem(dsn), _connections_problem(max_connections)])
        self._settings = Settings.from_env()
        self._dsn = dsn
        self._max_connections = max_connections
        self._watcher: FinishWatcher | None = None
        self._watcher_lock = threading.Lock()

    @property
    def dsn(self) -> str | None:
        """The database URL given, or the environment's once resolved (None until then)."""
        return self._dsn

    @property
    def database_url(self) -> str:
        """The URL this client connects to, for a psycopg connection of your own.

        `dsn` when given; else `ERRANDS_DATABASE_URL` (or `DATABASE_URL`); else the
        embedded development database while `errands run` runs it. Without any,
        `ConfigurationError` naming `ERRANDS_DATABASE_URL`. Connect to it to enqueue
        inside your own transaction (`enqueue(..., conn=conn)`).
        """
        if self._dsn is None:
            self._dsn = resolve_url(self._settings)
        return self._dsn

    def _url(self) -> str:
        return with_dead_peer_detection(self.database_url, self._settings.lease_seconds)

    def _checked_url(self) -> str:
        """The URL, once its database's schema is one this code may use; it never migrates."""
        url = self._url()
        with connect(url, **_UNPREPARED):
            pass
        return url

    def _finish_watcher(self) -> FinishWatcher:
        """The client's one listening connection (its schema checked already)."""
        with self._watcher_lock:
            if self._watcher is None:
                self._watcher = FinishWatcher(self._url(), WAIT_POLL_SECONDS, _UNPREPARED)
            return self._watcher

    def _close_watcher(self) -> None:
        with self._watcher_lock:
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None


class Client(ClientCore):
    """A handle on the queue, safe to share between threads.

    `dsn` None reads the database from the environment (docs: Configuration): the
    embedded development database when none is configured and `errands run`
    started it. Connections come from a small pool opened on first use.

    Its connections never prepare statements on the server, so that it works the
    same directly and through a transaction pooler, without a setting: through
    PgBouncer before 1.21, a name psycopg prepared on one server connection may
    exist on another as another client's statement, which would run instead
    (docs: Run behind PgBouncer). Directly, preparing would save about 80 µs a statement
    (bench/RESULTS.md).
    """

    def __init__(self, dsn: str | None = None, *, max_connections: int = 4) -> None:
        super().__init__(dsn, max_connections)
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect now rather than on first use: a database errands may not use fails here."""
        self._open_pool()

    def close(self) -> None:
        self._close_watcher()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def enqueue(
        self,
        task: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        after: Iterable[int] | None = None,
        on_parent_failure: str = "cancel",
        unique_key: str | None = None,
        on_conflict: str = "keep",
        conn: psycopg.Connection[Any] | None = None,
    ) -> Job:
        """Submit one job. With `conn`, inside the caller's transaction: a rollback leaves no job.

        `queue` and `max_attempts` default to those of the task when it is
        registered in this process, else to `default` and 5. With an
        idempotency key already stored, the stored job is returned (or
        `IdempotencyConflict` raised if it was submitted differently). With a
        unique key that a pending, failed or running job holds, that job is
        returned; with `on_conflict="replace"`, a still pending one of the same
        task takes this payload and run_at first (a debounce). With `after`
        (ids of stored jobs), the job waits in the state `waiting` until every one of
        them completed; one of them ending dead or cancelled cancels it, unless
        `on_parent_failure="run"` (docs/guides/workflows.md).
        """
        request = job_request(
            task,
            payload,
            queue,
            priority,
            run_at,
            delay,
            max_attempts,
            idempotency_key,
            unique_key,
            on_conflict,
            after,
            on_parent_failure,
        )
        if (captured := capture([request])) is not None:
            return captured[0]
        with self._connection(conn) as db:
            return run(db, enqueue_steps(request)).job

    def enqueue_many(
        self, specs: Iterable[Mapping[str, Any]], *, conn: psycopg.Connection[Any] | None = None
    ) -> builtins.list[Job]:
        """Submit many jobs in one transaction (sent by COPY): all or none.

        Each spec is a dict with the fields of the HTTP body (`task`, `payload`,
        `queue`, `priority`, `run_at` or `delay`, `max_attempts`, `idempotency_key`,
        `unique_key`, `on_conflict`).
        """
        requests = batch_requests(specs)
        if (captured := capture(requests)) is not None:
            return captured
        with self._connection(conn) as db:
            return [answer.job for answer in run(db, enqueue_many_steps(requests))]

    def enqueue_workflow(
        self, jobs: Iterable[Mapping[str, Any]], *, conn: psycopg.Connection[Any] | None = None
    ) -> builtins.list[Job]:
        """Store a workflow in one transaction, all of it or none; its jobs, in an order
        where parents come before their children, each carrying the `workflow_id`.

        Each job is a dict with the fields of an enqueue (`task`, `payload`, `queue`...)
        and a `ref` of its own; its `after` lists refs of jobs of the workflow and ids of
        stored jobs (docs/guides/workflows.md). The canvas (errands.chain, errands.group) builds
        these for you.
        """
        planned = workflow_plan(jobs)
        if (captured := capture_workflow(planned)) is not None:
            return captured
        with self._connection(conn) as db:
            return run(db, store_workflow_steps(planned))[1]

    def workflow(self, workflow_id: int) -> builtins.list[Job]:
        """The jobs of a workflow still stored, parents before children; [] when none is."""
        check_id(workflow_id, "workflow_id")
        with self._connection() as db:
            return run(db, admin.workflow_steps(workflow_id))

    def parent_results(self, ids: Iterable[int]) -> dict[int, Any]:
        """The result of each of these jobs still stored, by id (current_job().parents)."""
        with self._connection() as db:
            return run(db, admin.parent_results_steps(builtins.list(ids)))

    def get(self, job_id: int) -> Job | None:
        """The job as it is now, or None when no job has that id (`wait` raises instead)."""
        check_id(job_id)
        with self._connection() as db:
            return run(db, admin.get_steps(job_id))

    def list(
        self,
        state: JobState | str | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first; pass the last id of a page as `after` for the next page."""
        where = job_filter(state, queue, task, limit, after)
        with self._connection() as db:
            return run(db, admin.list_steps(**where.model_dump()))

    def retry(self, job_id: int) -> Job:
        """Run a dead or cancelled job again; `InvalidState` for any other state."""
        check_id(job_id)
        with self._connection() as db:
            return run(db, admin.manage_steps("retry", job_id))

    def cancel(self, job_id: int) -> Job:
        """Cancel a pending or failed job, or ask a running one to stop: it stays
        `in_progress`, `cancel_requested_at` set, until its attempt ends, and is then
        recorded `cancelled` however the attempt ends. `InvalidState` once finished."""
        check_id(job_id)
        with self._connection() as db:
            return run(db, admin.manage_steps("cancel", job_id))

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """The job once it is completed, dead or cancelled; TimeoutError after `timeout` seconds.

        Hears the job finish through a notification (one listening connection
        per Client, opened on the first wait), so it returns within
        milliseconds of the finish; the watched jobs are also read every
        second, in case a notification was missed. `JobNotFound` for an
        unknown id.
        """
        check_id(job_id)
        deadline = deadline_of(timeout)
        self._open_pool()  # the schema, with its finish notifications, is up to date
        watcher = self._finish_watcher()
        while True:
            finished = threading.Event()
            unwatch = watcher.watch(job_id, finished.set)
            try:
                job = found(job_id, self.get(job_id))
                if is_finished(job):
                    return job
                if not finished.wait(remaining(deadline)):
                    raise still_running(job, timeout)
            finally:
                unwatch()
            # Heard finished: read it (a manual retry in between makes it wait again).

    def stats(self) -> Stats:
        with self._connection() as db:
            return run(db, admin.stats_steps(self._settings.lease_seconds))

    @contextmanager
    def _connection(
        self, conn: psycopg.Connection[Any] | None = None
    ) -> Iterator[psycopg.Connection[Any]]:
        if conn is not None and not isinstance(conn, psycopg.Connection):
            raise InvalidArgument([conn_problem(conn, psycopg.Connection, "AsyncClient")])
        try:
            if conn is not None:  # the caller's: this client's own database is not needed
                yield conn
                return
            with self._open_pool().connection() as pooled:
                try:
                    yield pooled
                finally:
                    used(pooled)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise refused(exc) from None

    def _open_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._checked_url(),
                    min_size=1,
                    max_size=self._max_connections,
                    kwargs=POOLED,
                    configure=configure,
                    check=_check_if_idle,
                    open=True,
                )
            return self._pool


# The arguments of every pooled connection of a client: see Client's docstring.
POOLED: dict[str, Any] = {"autocommit": True, **_UNPREPARED}


def job_request(
    task: str,
    payload: Mapping[str, Any] | None,
    queue: str | None,
    priority: int,
    run_at: datetime | None,
    delay: float | timedelta | None,
    max_attempts: int | None,
    idempotency_key: str | None,
    unique_key: str | None,
    on_conflict: str,
    after: Iterable[int] | None = None,
    on_parent_failure: str = "cancel",
) -> JobRequest:
    """enqueue()'s arguments as a checked request, with the registered task's defaults."""
    spec = {
        "task": task,
        "payload": payload,
        "queue": queue,
        "priority": priority,
        "run_at": run_at,
        "delay": delay,
        "max_attempts": max_attempts,
        "idempotency_key": idempotency_key,
        "after": _listed(after),
        "on_parent_failure": on_parent_failure,
        "unique_key": unique_key,
        "on_conflict": on_conflict,
    }
    return parse_request(spec, defaults=task_defaults)


def _listed(after: object) -> object:
    """Parents given as any iterable of ids (a generator, a set): a list, as the model
    takes; anything else is left for the model to refuse."""
    if isinstance(after, Iterable) and not isinstance(after, str | bytes | Mapping):
        return builtins.list(after)
    return after


def workflow_plan(jobs: object) -> builtins.list[PlannedJob]:
    """enqueue_workflow()'s jobs in an order to store them; InvalidJob naming `jobs[3].after[0]`."""
    if isinstance(jobs, str | bytes | Mapping) or not isinstance(jobs, Iterable):
        raise InvalidJob([FieldError("jobs", "must be a list of job specs (dicts)")])
    return plan_workflow_jobs(builtins.list(jobs), defaults=task_defaults)


def batch_requests(specs: object) -> builtins.list[JobRequest]:
    """enqueue_many()'s specs as checked requests; InvalidJob naming `[3].priority`."""
    if isinstance(specs, str | bytes | Mapping) or not isinstance(specs, Iterable):
        raise InvalidJob([FieldError("specs", "must be a list of job specs (dicts)")])
    return parse_requests(builtins.list(specs), defaults=task_defaults)


def capture(
    requests: Sequence[JobFields], workflow: Sequence[PlannedJob] | None = None
) -> builtins.list[Job] | None:
    """The jobs errands.testing records instead of storing them, while it captures; else None."""
    recorder = _Process.recorder
    return None if recorder is None else recorder(requests, workflow)


def capture_workflow(planned: Sequence[PlannedJob]) -> builtins.list[Job] | None:
    """`capture`, for a workflow's jobs in the order they would be stored."""
    return capture([job.request for job in planned], planned)


def job_filter(
    state: object, queue: object, task: object, limit: object, after: object
) -> JobFilter:
    fields = {"state": state, "queue": queue, "task": task, "limit": limit, "after": after}
    try:
        return JobFilter.model_validate(fields)
    except ValidationError as exc:
        raise InvalidArgument(field_errors(exc)) from None


def conn_problem(conn: object, kind: type, other_client: str) -> FieldError:
    """`conn` is not the kind of connection this client runs on."""
    wrong_kind = isinstance(conn, psycopg.Connection | psycopg.AsyncConnection)
    hint = f" (an {type(conn).__name__} goes to errands.{other_client})" if wrong_kind else ""
    return FieldError("conn", f"must be a psycopg {kind.__name__} or None{hint}")


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def found(job_id: int, job: Job | None) -> Job:
    """The job waited for; JobNotFound when there is none."""
    if job is None:
        raise JobNotFound(job_id)
    return job


def still_running(job: Job, timeout: float | None) -> TimeoutError:
    return TimeoutError(f"job {job.id} is still {job.state.value} after {timeout:g}s")


def _dsn_problem(dsn: object) -> FieldError | None:
    if dsn is None:
        return None
    try:
        if isinstance(dsn, str):
            conninfo_to_dict(dsn)
            return None
    except psycopg.ProgrammingError:
        pass  # its message may quote the string, password included
    return FieldError("dsn", "must be a PostgreSQL URL or connection string, or None")


def _refuse(problems: builtins.list[FieldError | None]) -> None:
    errors = [problem for problem in problems if problem is not None]
    if errors:
        raise InvalidArgument(errors)


def check_id(job_id: object, name: str = "job_id") -> None:
    try:
        _JOB_ID.validate_python(job_id)
    except ValidationError as exc:
        raise InvalidArgument(field_errors(exc, name)) from None


def _connections_problem(value: object) -> FieldError | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        return FieldError("max_connections", "must be an integer between 1 and 1000")
    return None


def refused(exc: psycopg.Error) -> InvalidArgument:
    """The database refused what validation let through: named, without the row it quoted."""
    where = exc.diag.column_name or exc.diag.constraint_name or "request"
    reason = scrub(exc.diag.message_primary or str(exc), exc)
    return InvalidArgument([FieldError(where, f"refused by the database: {reason}")])


def default_client() -> Client:
    """The client `Task.enqueue` uses when given none: the database of the environment.

    Inside a worker, the worker's own database (see `set_default_client`).
    """
    with _Process.lock:
        if _Process.default is None:
            _Process.default = Client()
        return _Process.default


def set_default_client(client: Client) -> None:
    """Make `client` the one `Task.enqueue` uses when given none (a worker sets its own);
    the AsyncClients `Task.aenqueue` makes when given none use its database too."""
    with _Process.lock:
        _Process.default = client
        _Process.dsn = client.dsn


def default_dsn() -> str | None:
    """The database of the default client, when one was set; else None (the environment's)."""
    return _Process.dsn
