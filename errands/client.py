"""`errands.Client`: submit and manage jobs from Python."""

from __future__ import annotations

import builtins
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from errands import queue as ops  # `queue` is also a parameter name here
from errands.config import Settings
from errands.database import ensure_schema, pooling_options, resolve_url
from errands.queue import Job, JobState, Stats
from errands.tasks import registered

# A connection idle for longer than this is checked (one empty round trip) before use,
# so that a database restart costs the caller a reconnection rather than an error,
# while a busy caller pays nothing.
IDLE_CHECK_SECONDS = 0.2
_last_used: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = weakref.WeakKeyDictionary()


def _check_if_idle(conn: psycopg.Connection[Any]) -> None:
    if time.monotonic() - _last_used.get(conn, 0.0) > IDLE_CHECK_SECONDS:
        ConnectionPool.check_connection(conn)


class Client:
    """A handle on the queue, safe to share between threads.

    `dsn` None reads the database from the environment (README: Configuration), starting the
    embedded development database when none is configured. Connections come
    from a small pool opened on first use.
    """

    def __init__(
        self, dsn: str | None = None, *, max_connections: int = 4, pgbouncer: bool | None = None
    ) -> None:
        self._settings = Settings.from_env()
        # Through a transaction-pooling PgBouncer (None: ERRANDS_PGBOUNCER says).
        self._pgbouncer = self._settings.pgbouncer if pgbouncer is None else pgbouncer
        self._dsn = dsn
        self._max_connections = max_connections
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
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
        conn: psycopg.Connection[Any] | None = None,
    ) -> Job:
        """Submit one job. With `conn`, inside the caller's transaction: a rollback leaves no job.

        `queue` and `max_attempts` default to those of the task when it is
        registered in this process, else to `default` and 5. With an
        idempotency key already stored, the stored job is returned (or
        `IdempotencyConflict` raised if it was submitted differently).
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
        }
        request = self._request(spec, prefix="")
        with self._connection(conn) as db:
            return ops.enqueue(db, request).job

    def enqueue_many(
        self, specs: Iterable[Mapping[str, Any]], *, conn: psycopg.Connection[Any] | None = None
    ) -> builtins.list[Job]:
        """Submit many jobs in one round trip and one transaction: all or none.

        Each spec is a dict with the fields of the HTTP body (`task`, `payload`,
        `queue`, `priority`, `run_at` or `delay`, `max_attempts`, `idempotency_key`).
        """
        requests = [self._request(spec, prefix=f"[{i}].") for i, spec in enumerate(specs)]
        with self._connection(conn) as db:
            return [answer.job for answer in ops.enqueue_many(db, requests)]

    def get(self, job_id: int) -> Job | None:
        with self._connection() as db:
            return ops.get(db, job_id)

    def list(
        self,
        state: JobState | str | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first; pass the last id of a page as `after` for the next page."""
        with self._connection() as db:
            return ops.list_jobs(db, state=state, queue=queue, task=task, limit=limit, after=after)

    def retry(self, job_id: int) -> Job:
        """Run a dead or cancelled job again; `InvalidState` for any other state."""
        with self._connection() as db:
            return ops.retry(db, job_id)

    def cancel(self, job_id: int) -> Job:
        """Cancel a pending or failed job; `InvalidState` once it runs or has finished."""
        with self._connection() as db:
            return ops.cancel(db, job_id)

    def stats(self) -> Stats:
        with self._connection() as db:
            return ops.stats(db, worker_silence_seconds=self._settings.lease_seconds)

    @staticmethod
    def _request(spec: Mapping[str, Any], prefix: str) -> ops.JobRequest:
        """Validate one spec, filling queue and max_attempts from the task when it is known."""
        fields = {name: value for name, value in spec.items() if value is not None}
        task = registered(fields["task"]) if isinstance(fields.get("task"), str) else None
        if task is not None:
            fields.setdefault("queue", task.queue)
            fields.setdefault("max_attempts", task.max_attempts)
        return ops.parse_request(fields, prefix=prefix)

    @contextmanager
    def _connection(
        self, conn: psycopg.Connection[Any] | None = None
    ) -> Iterator[psycopg.Connection[Any]]:
        pool = self._open_pool()
        if conn is not None:
            yield conn
            return
        with pool.connection() as pooled:
            try:
                yield pooled
            finally:
                _last_used[pooled] = time.monotonic()

    def _open_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._pool is None:
            url = self._dsn or resolve_url(self._settings)
            options = {"autocommit": True, **pooling_options(self._pgbouncer)}
            with psycopg.connect(url, **options) as conn:
                ensure_schema(conn, url)
            self._pool = ConnectionPool(
                url,
                min_size=1,
                max_size=self._max_connections,
                kwargs=options,
                check=_check_if_idle,
                open=True,
            )
        return self._pool
