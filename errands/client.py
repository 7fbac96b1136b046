"""`errands.Client`: submit and manage jobs from Python."""

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
    JobFilter,
    JobId,
    JobRequest,
    field_errors,
    parse_request,
    parse_requests,
)
from errands.queue.submit import enqueue, enqueue_many
from errands.registry import task_defaults

# A connection idle for longer than this is checked (one empty round trip) before use,
# so that a database restart costs the caller a reconnection rather than an error,
# while a busy caller pays nothing.
IDLE_CHECK_SECONDS = 0.2
# Every connection of a Client: see the class's docstring.
_UNPREPARED = pooling_options(pgbouncer=True)
# How often `wait` reads the jobs it waits for, in case a finish notification was missed.
WAIT_POLL_SECONDS = 1.0
_last_used: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = weakref.WeakKeyDictionary()


def _check_if_idle(conn: psycopg.Connection[Any]) -> None:
    if time.monotonic() - _last_used.get(conn, 0.0) > IDLE_CHECK_SECONDS:
        ConnectionPool.check_connection(conn)


Recorder = Callable[[Sequence[JobRequest]], list[Job]]
_JOB_ID: TypeAdapter[int] = TypeAdapter(JobId)


class _Process:
    """What the whole process shares: its default client, and a recorder while tests capture."""

    lock = threading.Lock()
    default: Client | None = None
    recorder: Recorder | None = None  # errands.testing.capture_jobs(): record, do not store


@contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    """Hand every job any Client enqueues in this process to `recorder` instead of storing it."""
    previous, _Process.recorder = _Process.recorder, recorder
    try:
        yield
    finally:
        _Process.recorder = previous


class Client:
    """A handle on the queue, safe to share between threads.

    `dsn` None reads the database from the environment (README: Configuration): the
    embedded development database when none is configured and `errands run`
    started it. Connections come from a small pool opened on first use.

    Its connections never prepare statements on the server, so that it works the
    same directly and through a transaction pooler, without a setting: through
    PgBouncer before 1.21, a name psycopg prepared on one server connection may
    exist on another as another client's statement, which would run instead
    (README: PgBouncer). Directly, preparing would save about 80 µs a statement
    (bench/RESULTS.md).
    """

    def __init__(self, dsn: str | None = None, *, max_connections: int = 4) -> None:
        problems = [_dsn_problem(dsn), _connections_problem(max_connections)]
        _refuse(problems)
        self._settings = Settings.from_env()
        self._dsn = dsn
        self._max_connections = max_connections
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._watcher: FinishWatcher | None = None
        self._watcher_lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
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
        task takes this payload and run_at first (a debounce).
        """
        spec = {
            "task": task,
            "payload": payload,
            "queue": queue,
            "priority": priority,
            "run_at": run_at,
            "delay": delay,
            "max_attempts": max_attempts,
            "idempotency_key": idempotency_key,
            "unique_key": unique_key,
            "on_conflict": on_conflict,
        }
        request = parse_request(spec, defaults=task_defaults)
        if _Process.recorder is not None:
            return _Process.recorder([request])[0]
        with self._connection(conn) as db:
            return enqueue(db, request).job

    def enqueue_many(
        self, specs: Iterable[Mapping[str, Any]], *, conn: psycopg.Connection[Any] | None = None
    ) -> builtins.list[Job]:
        """Submit many jobs in one transaction (sent by COPY): all or none.

        Each spec is a dict with the fields of the HTTP body (`task`, `payload`,
        `queue`, `priority`, `run_at` or `delay`, `max_attempts`, `idempotency_key`,
        `unique_key`, `on_conflict`).
        """
        if isinstance(specs, str | bytes | Mapping) or not isinstance(specs, Iterable):
            raise InvalidJob([FieldError("specs", "must be a list of job specs (dicts)")])
        requests = parse_requests(list(specs), defaults=task_defaults)
        if _Process.recorder is not None:
            return _Process.recorder(requests)
        with self._connection(conn) as db:
            return [answer.job for answer in enqueue_many(db, requests)]

    def get(self, job_id: int) -> Job | None:
        _check_id(job_id)
        with self._connection() as db:
            return admin.get(db, job_id)

    def list(
        self,
        state: JobState | str | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first; pass the last id of a page as `after` for the next page."""
        fields = {"state": state, "queue": queue, "task": task, "limit": limit, "after": after}
        try:
            where = JobFilter.model_validate(fields)
        except ValidationError as exc:
            raise InvalidArgument(field_errors(exc)) from None
        with self._connection() as db:
            return admin.list_jobs(db, **where.model_dump())

    def retry(self, job_id: int) -> Job:
        """Run a dead or cancelled job again; `InvalidState` for any other state."""
        _check_id(job_id)
        with self._connection() as db:
            return admin.retry(db, job_id)

    def cancel(self, job_id: int) -> Job:
        """Cancel a pending or failed job; `InvalidState` once it runs or has finished."""
        _check_id(job_id)
        with self._connection() as db:
            return admin.cancel(db, job_id)

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """The job once it is completed, dead or cancelled; TimeoutError after `timeout` seconds.

        Hears the job finish through a notification (one listening connection
        per Client, opened on the first wait), so it returns within
        milliseconds of the finish; the watched jobs are also read every
        second, in case a notification was missed. `JobNotFound` for an
        unknown id.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            finished = threading.Event()
            unwatch = self._finish_watcher().watch(job_id, finished.set)
            try:
                job = self.get(job_id)
                if job is None:
                    raise JobNotFound(job_id)
                if is_finished(job):
                    return job
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not finished.wait(remaining):
                    raise TimeoutError(
                        f"job {job_id} is still {job.state.value} after {timeout:g}s"
                    )
            finally:
                unwatch()
            # Heard finished: read it (a manual retry in between makes it wait again).

    def stats(self) -> Stats:
        with self._connection() as db:
            return admin.stats(db, worker_silence_seconds=self._settings.lease_seconds)

    def _finish_watcher(self) -> FinishWatcher:
        with self._watcher_lock:
            if self._watcher is None:
                self._open_pool()  # the schema, with its finish notifications, is up to date
                self._watcher = FinishWatcher(self._url(), WAIT_POLL_SECONDS, _UNPREPARED)
            return self._watcher

    @contextmanager
    def _connection(
        self, conn: psycopg.Connection[Any] | None = None
    ) -> Iterator[psycopg.Connection[Any]]:
        if conn is not None and not isinstance(conn, psycopg.Connection):
            raise InvalidArgument([FieldError("conn", "must be a psycopg Connection or None")])
        try:
            if conn is not None:  # the caller's: this client's own database is not needed
                yield conn
                return
            with self._open_pool().connection() as pooled:
                try:
                    yield pooled
                finally:
                    _last_used[pooled] = time.monotonic()
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            # Validation lets nothing through that the database refuses; should it ever,
            # the caller gets the refusal named, without the row the database quoted.
            raise _refused(exc) from None

    def _url(self) -> str:
        if self._dsn is None:
            self._dsn = resolve_url(self._settings)
        return with_dead_peer_detection(self._dsn, self._settings.lease_seconds)

    def _open_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._pool is None:
            url = self._url()
            with connect(url, **_UNPREPARED):  # never migrates: refuses a schema it may not use
                pass
            self._pool = ConnectionPool(
                url,
                min_size=1,
                max_size=self._max_connections,
                kwargs={"autocommit": True, **_UNPREPARED},
                configure=configure,
                check=_check_if_idle,
                open=True,
            )
        return self._pool


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


def _check_id(job_id: object) -> None:
    try:
        _JOB_ID.validate_python(job_id)
    except ValidationError as exc:
        raise InvalidArgument(field_errors(exc, "job_id")) from None


def _connections_problem(value: object) -> FieldError | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        return FieldError("max_connections", "must be an integer between 1 and 1000")
    return None


def _refused(exc: psycopg.Error) -> InvalidArgument:
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
    """Make `client` the one `Task.enqueue` uses when given none (a worker sets its own)."""
    with _Process.lock:
        _Process.default = client
