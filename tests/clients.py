"""The Client's behaviour tests run against the AsyncClient too.

A test module that imports `client` and `app_connect` from here gets them
parametrized over both clients: the AsyncClient is driven from the synchronous
test through `Blocking`, which awaits each of its methods on an event loop
running on a thread of its own, and `app_connect` opens the application's
connection of the matching kind (a psycopg AsyncConnection for the AsyncClient).
So one test states one behaviour, and holds it for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import psycopg
import pytest

from errands import AsyncClient, Client

CLIENTS = ["Client", "AsyncClient"]


class Portal:
    """An event loop on a thread; `call` runs a coroutine there and returns its answer."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class Blocking:
    """An async object's coroutine methods, called as plain methods (any argument that is a
    Blocking stands for the object it wraps)."""

    def __init__(self, wrapped: Any, portal: Portal) -> None:
        self.wrapped = wrapped
        self._portal = portal

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.wrapped, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(_unwrapped(a) for a in args)
            kwargs = {k: _unwrapped(v) for k, v in kwargs.items()}
            answer = attribute(*args, **kwargs)
            if asyncio.iscoroutine(answer):
                answer = self._portal.call(answer)
            if isinstance(answer, psycopg.AsyncCursor):
                return Blocking(answer, self._portal)
            return answer

        return call

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unwrapped(value: Any) -> Any:
    return value.wrapped if isinstance(value, Blocking) else value


@pytest.fixture(scope="session")
def portal() -> Iterator[Portal]:
    loop = Portal()
    yield loop
    loop.close()


@pytest.fixture(params=CLIENTS)
def client_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture(name="client")
def either_client(client_kind: str, db_url: str, portal: Portal) -> Iterator[Any]:
    """A Client, or an AsyncClient driven through Blocking, on this test's database."""
    if client_kind == "Client":
        with Client(db_url) as client:
            yield client
        return
    blocking = Blocking(AsyncClient(db_url), portal)
    yield blocking
    blocking.close()


AppConnect = Callable[..., Any]


@pytest.fixture(name="app_connect")
def either_app_connect(client_kind: str, portal: Portal) -> AppConnect:
    """`psycopg.connect`, or for the AsyncClient `AsyncConnection.connect` behind Blocking."""

    def connect(url: str, **kwargs: Any) -> Any:
        if client_kind == "Client":
            return psycopg.connect(url, **kwargs)
        return Blocking(portal.call(psycopg.AsyncConnection.connect(url, **kwargs)), portal)

    return connect


def blocking_client(kind: str, url: str, portal: Portal, **kwargs: Any) -> Any:
    """A client of `kind` on `url`, with synchronous methods either way."""
    if kind == "Client":
        return Client(url, **kwargs)
    return Blocking(AsyncClient(url, **kwargs), portal)


@contextlib.contextmanager
def closing(client: Any) -> Iterator[Any]:
    try:
        yield client
    finally:
        client.close()


EnqueueTask = Callable[..., Callable[..., Any]]


@pytest.fixture
def enqueue_task(client_kind: str, portal: Portal) -> EnqueueTask:
    """`enqueue_task(task, **options)(**payload)`: `task.options(...).enqueue(...)`, or for the
    AsyncClient `await task.options(...).aenqueue(...)`."""

    def with_options(task: Any, **options: Any) -> Callable[..., Any]:
        call = task.options(**{name: _unwrapped(value) for name, value in options.items()})

        def submit(**payload: Any) -> Any:
            if client_kind == "Client":
                return call.enqueue(**payload)
            return portal.call(call.aenqueue(**payload))

        return submit

    return with_options
