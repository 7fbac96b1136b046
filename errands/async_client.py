"""`errands.AsyncClient`: the Client's methods as coroutines, for applications on an event loop.

It checks every argument and builds every request as the Client does, and runs
the same queue operations (errands/queue/steps.py), on psycopg's async pool
instead of its threaded one: the same errors, idempotent replays and refusals,
the same database from the environment, no migration, no prepared statement
(README: PgBouncer). Only the execution differs.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from errands.client import (
    POOLED,
    ClientCore,
    batch_requests,
    capture,
    capture_workflow,
    check_id,
    conn_problem,
    deadline_of,
    default_dsn,
    found,
    is_idle,
    job_filter,
    job_request,
    refused,
    remaining,
    still_running,
    used,
    workflow_plan,
)
from errands.database import configure_async
from errands.errors import ErrandsError, InvalidArgument
from errands.queue import admin
from errands.queue.admin import Stats
from errands.queue.finished import is_finished
from errands.queue.jobs import Job, JobState
from errands.queue.steps import run_async
from errands.queue.submit import enqueue_many_steps, enqueue_steps, store_workflow_steps

AsyncConn = psycopg.AsyncConnection[Any]


async def _check_if_idle(conn: AsyncConn) -> None:
    if is_idle(conn):
        await AsyncConnectionPool.check_connection(conn)


class AsyncClient(ClientCore):
    """A handle on the queue for coroutines: `await client.enqueue(...)`.

    `dsn` None reads the database from the environment, as `Client()` does.
    Its pool opens on first use, on the event loop of that use: an AsyncClient
    serves that one loop (psycopg's async pool belongs to the loop it runs on).
    Close it with `await client.close()`, or use `async with AsyncClient() as client`;
    errands.contrib.starlette.lifespan does both for a Starlette or FastAPI app.
    """

    def __init__(self, dsn: str | None = None, *, max_connections: int = 4) -> None:
        super().__init__(dsn, max_connections)
        self._pool: AsyncConnectionPool[AsyncConn] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening = asyncio.Lock()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect now rather than on first use: a database errands may not use fails here."""
        await self._open_pool()

    async def close(self) -> None:
        self._close_watcher()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def enqueue(
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
        conn: AsyncConn | None = None,
    ) -> Job:
        """Submit one job; with `conn` (an AsyncConnection), inside the caller's transaction.

        As `Client.enqueue`: a rollback of that transaction leaves no job; a unique key a live
        job holds returns that job (replaced first with `on_conflict="replace"`).
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
        async with self._connection(conn) as db:
            return (await run_async(db, enqueue_steps(request))).job

    async def enqueue_many(
        self, specs: Iterable[Mapping[str, Any]], *, conn: AsyncConn | None = None
    ) -> builtins.list[Job]:
        """Submit many jobs in one transaction: all or none (as `Client.enqueue_many`)."""
        requests = batch_requests(specs)
        if (captured := capture(requests)) is not None:
            return captured
        async with self._connection(conn) as db:
            return [answer.job for answer in await run_async(db, enqueue_many_steps(requests))]

    async def enqueue_workflow(
        self, jobs: Iterable[Mapping[str, Any]], *, conn: AsyncConn | None = None
    ) -> builtins.list[Job]:
        """Store a workflow in one transaction, all of it or none (as `Client.enqueue_workflow`);
        its jobs, parents before children, each carrying the `workflow_id`."""
        planned = workflow_plan(jobs)
        if (captured := capture_workflow(planned)) is not None:
            return captured
        async with self._connection(conn) as db:
            return (await run_async(db, store_workflow_steps(planned)))[1]

    async def workflow(self, workflow_id: int) -> builtins.list[Job]:
        """The jobs of a workflow still stored, parents before children; [] when none is."""
        check_id(workflow_id, "workflow_id")
        async with self._connection() as db:
            return await run_async(db, admin.workflow_steps(workflow_id))

    async def get(self, job_id: int) -> Job | None:
        check_id(job_id)
        async with self._connection() as db:
            return await run_async(db, admin.get_steps(job_id))

    async def list(
        self,
        state: JobState | str | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first; pass the last id of a page as `after` for the next page."""
        where = job_filter(state, queue, task, limit, after)
        async with self._connection() as db:
            return await run_async(db, admin.list_steps(**where.model_dump()))

    async def retry(self, job_id: int) -> Job:
        """Run a dead or cancelled job again; `InvalidState` for any other state."""
        check_id(job_id)
        async with self._connection() as db:
            return await run_async(db, admin.manage_steps("retry", job_id))

    async def cancel(self, job_id: int) -> Job:
        """Cancel a pending or failed job, or ask a running one to stop (`Client.cancel`);
        `InvalidState` once finished."""
        check_id(job_id)
        async with self._connection() as db:
            return await run_async(db, admin.manage_steps("cancel", job_id))

    async def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """The job once it is completed, dead or cancelled; TimeoutError after `timeout` seconds.

        As `Client.wait`: the finish is heard through a notification, on one
        listening connection (on a thread of its own, so it never blocks the loop).
        """
        check_id(job_id)
        deadline = deadline_of(timeout)
        await self._open_pool()  # the schema, with its finish notifications, is up to date
        watcher = self._finish_watcher()
        loop = asyncio.get_running_loop()
        while True:
            finished = asyncio.Event()
            unwatch = watcher.watch(job_id, _soon_on(loop, finished.set))
            try:
                job = found(job_id, await self.get(job_id))
                if is_finished(job):
                    return job
                try:
                    await asyncio.wait_for(finished.wait(), remaining(deadline))
                except TimeoutError:
                    raise still_running(job, timeout) from None
            finally:
                unwatch()

    async def stats(self) -> Stats:
        async with self._connection() as db:
            return await run_async(db, admin.stats_steps(self._settings.lease_seconds))

    @asynccontextmanager
    async def _connection(self, conn: AsyncConn | None = None) -> AsyncIterator[AsyncConn]:
        if conn is not None and not isinstance(conn, psycopg.AsyncConnection):
            raise InvalidArgument([conn_problem(conn, psycopg.AsyncConnection, "Client")])
        try:
            if conn is not None:  # the caller's: this client's own database is not needed
                yield conn
                return
            pool = await self._open_pool()
            async with pool.connection() as pooled:
                try:
                    yield pooled
                finally:
                    used(pooled)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise refused(exc) from None

    async def _open_pool(self) -> AsyncConnectionPool[AsyncConn]:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise ErrandsError(
                "this AsyncClient serves the event loop it was first used on; "
                "make one AsyncClient per event loop"
            )
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    # Resolving the URL may read the embedded database's files, and checking
                    # the schema is a synchronous connection: both off the loop, once.
                    url = await asyncio.to_thread(self._checked_url)
                    pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
                        url,
                        min_size=1,
                        max_size=self._max_connections,
                        kwargs=POOLED,
                        configure=configure_async,
                        check=_check_if_idle,
                        open=False,
                    )
                    await pool.open()
                    self._pool = pool
        return self._pool


def _soon_on(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> Callable[[], None]:
    """`callback`, called on `loop` when called from the watcher's thread."""

    def call() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(callback)

    return call


_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
    weakref.WeakKeyDictionary()
)
_defaults_lock = threading.Lock()


def default_async_client() -> AsyncClient:
    """The AsyncClient `Task.aenqueue` uses when given none, on the running event loop.

    The one errands.contrib.starlette.lifespan opened, or one made on first use
    for this loop, on the default client's database (the worker's, inside a
    task) or else the environment's.
    """
    loop = asyncio.get_running_loop()
    with _defaults_lock:
        client = _defaults.get(loop)
        if client is None:
            client = _defaults[loop] = AsyncClient(default_dsn())
            _closers.add(loop.create_task(_close_when_the_loop_ends(client)))
        return client


_closers: set[asyncio.Task[None]] = set()  # referenced while they wait, as asyncio asks


async def _close_when_the_loop_ends(client: AsyncClient) -> None:
    """Close a default client with its loop: `asyncio.run` cancels every task as it ends,
    and a pool left open then has its own tasks cancelled under it mid-connect, which can
    leave `asyncio.run` waiting for ever."""
    try:
        await asyncio.Event().wait()
    finally:
        await client.close()
        _closers.discard(asyncio.current_task())


@contextlib.contextmanager
def serving_as_default(client: AsyncClient) -> Iterator[None]:
    """Make `client` the default AsyncClient of the running loop inside the block."""
    loop = asyncio.get_running_loop()
    with _defaults_lock:
        previous = _defaults.get(loop)
        _defaults[loop] = client
    try:
        yield
    finally:
        with _defaults_lock:
            if previous is None:
                _defaults.pop(loop, None)
            else:
                _defaults[loop] = previous
