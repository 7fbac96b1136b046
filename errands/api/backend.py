"""Where the API's handlers run: a bounded pool of request threads, each with a pooled
connection, so that the event loop only moves bytes.

Handlers are synchronous and share the queue functions the Python client uses.
A request is admitted when a thread is asked for it: beyond `max_in_flight`
requests in hand, the next is refused at once with 503, never after a wait. A
connection still sending its headers or body holds no slot, and /health needs none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from errands.api.errors import HTTPError
from errands.database import configure as configure_session
from errands.database import pooling_options

T = TypeVar("T")
Conn = psycopg.Connection[Any]

THREADS = 8
MAX_IN_FLIGHT = 128


class Backend:
    def __init__(
        self,
        database_url: str,
        threads: int = THREADS,
        max_in_flight: int = MAX_IN_FLIGHT,
        *,
        pgbouncer: bool = False,
    ) -> None:
        self._url = database_url
        self.connect_options = pooling_options(pgbouncer)
        self._threads = threads
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._executor: ThreadPoolExecutor | None = None
        self._pool: ConnectionPool[Conn] | None = None

    def open(self) -> None:
        self._executor = ThreadPoolExecutor(self._threads, "errands-api")
        self._pool = ConnectionPool(
            self._url,
            min_size=1,
            max_size=self._threads,
            kwargs={"autocommit": True, **self.connect_options},
            configure=configure_session,
            timeout=5,
            open=True,
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def connection(self) -> AbstractContextManager[Conn]:
        assert self._pool is not None, "the application was not started"
        return self._pool.connection()

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` on a request thread; 503 at once while too many requests are in hand."""
        if self._in_flight >= self._max_in_flight:
            raise HTTPError(
                503,
                "overloaded",
                f"more than {self._max_in_flight} requests at once; try again shortly",
                headers={"Retry-After": "1"},
            )
        return await self.run_admitted(work, *args)

    async def run_admitted(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` on a request thread, for a request admitted already: a long poll
        that waited is answered, never refused after its wait."""
        assert self._executor is not None, "the application was not started"
        self._in_flight += 1
        try:
            return await _on_thread(self._executor, work, *args)
        finally:
            self._in_flight -= 1

    async def with_connection(self, work: Callable[[Conn], T], *, admitted: bool = False) -> T:
        """`work(conn)` on a request thread, with a pooled connection."""

        def connected() -> T:
            with self.connection() as conn:
                return work(conn)

        return await (self.run_admitted(connected) if admitted else self.run(connected))


def _on_thread(
    executor: ThreadPoolExecutor, work: Callable[..., T], *args: Any
) -> asyncio.Future[T]:
    """`work(*args)` on one of `executor`'s threads, its outcome handed straight to the loop.

    What loop.run_in_executor does, less its chain of a thread's future to a
    loop's (wrap_future): about half the CPU per hand-off (9-10 against 20-25 us
    measured, uvloop, shared machine), and POST /jobs makes one per request.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.cancelled():  # a task cancelled meanwhile (shutdown) takes no answer
            outcome()

    def call() -> None:
        try:
            result = work(*args)
        except BaseException as exc:  # the awaiting task raises it, as run_in_executor's would
            loop.call_soon_threadsafe(settle, partial(future.set_exception, exc))
        else:
            loop.call_soon_threadsafe(settle, partial(future.set_result, result))

    executor.submit(call)
    return future
