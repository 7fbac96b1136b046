"""The ASGI application: routing, authentication, bodies, errors and the request log.

Handlers (endpoints.py) are synchronous and share the queue functions the
Python client uses; they run on a bounded thread pool, each with a pooled
connection, so the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg_pool import ConnectionPool

from errands.api import endpoints
from errands.api.guesses import Guesses
from errands.api.http import (
    MAX_BODY_BYTES,
    SINGLE_HEADERS,
    HTTPError,
    Request,
    Response,
    invalid,
)
from errands.api.longpoll import FinishWaits, until_heard
from errands.api.openapi import document
from errands.api.ui import Dashboard
from errands.database import configure as configure_session
from errands.database import pooling_options
from errands.errors import FieldError
from errands.queue import is_finished
from errands.queue.requests import Field, parse_fields

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Conn = psycopg.Connection[Any]
Handler = Callable[[Conn, Request], Response]
T = TypeVar("T")
# Why the service is not ready beyond the database (under `errands run`: no worker
# running), or None when it is.
Readiness = Callable[[], str | None]

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
# Hit by every probe and scrape: their request lines are logged at debug, unless they fail.
PROBE_PATHS = OPEN_PATHS
# Requests handled at once (queued for, or running on, the threads); beyond it, 503. A
# connection still sending its headers or body holds no slot, and /health needs none.
MAX_IN_FLIGHT = 128

_log = structlog.get_logger("errands.api")


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler | None  # None: answered without a database connection
    query: Mapping[str, Field] = field(default_factory=dict)  # the query parameters it takes


def _routes(lease_seconds: float, readiness: Readiness | None) -> list[Route]:
    job = r"/jobs/(?P<id>[0-9]{1,20})"  # ASCII digits: \d would take "٣"
    named_queue = r"/queues/(?P<name>[^/]+)"
    table: list[tuple[str, str, Handler | None, Mapping[str, Field]]] = [
        ("POST", "/jobs", endpoints.submit, {}),
        ("POST", "/jobs/batch", endpoints.submit_batch, {}),
        ("GET", "/jobs", endpoints.list_jobs, endpoints.LIST_FILTERS),
        ("GET", job, endpoints.get_job, endpoints.JOB_QUERY),
        ("POST", job + "/retry", endpoints.retry_job, {}),
        ("POST", job + "/cancel", endpoints.cancel_job, {}),
        ("GET", "/queues", endpoints.list_queues, {}),
        ("POST", named_queue + "/pause", endpoints.pause_queue, {}),
        ("POST", named_queue + "/resume", endpoints.resume_queue, {}),
        ("GET", "/stats", partial(endpoints.stats, lease_seconds=lease_seconds), {}),
        ("GET", "/schedules", endpoints.schedules, {}),
        ("GET", "/ready", partial(endpoints.ready, readiness=readiness), {}),
        ("GET", "/metrics", endpoints.prometheus, {}),
        ("GET", "/health", None, {}),
        ("GET", "/openapi.json", None, {}),
    ]
    return [
        Route(method, re.compile(path), handler, query) for method, path, handler, query in table
    ]


class App:
    """The errands HTTP API as an ASGI application."""

    def __init__(
        self,
        database_url: str,
        tokens: tuple[str, ...],
        lease_seconds: float,
        threads: int = 8,
        readiness: Readiness | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        ui: bool = True,
        *,
        pgbouncer: bool = False,
    ) -> None:
        self._url = database_url
        self._pgbouncer = pgbouncer
        self._guesses = Guesses()
        self._ui = Dashboard(tokens, lease_seconds, self._guesses) if ui else None
        self._tokens = [token.encode() for token in tokens]
        self._routes = _routes(lease_seconds, readiness)
        self._threads = threads
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._executor: ThreadPoolExecutor | None = None
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._finishes: FinishWaits | None = None
        self._openapi = Response.json(200, document())
        if not tokens:
            _log.warning(
                "ERRANDS_API_TOKENS is not set: the API accepts every request unauthenticated"
            )

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        self._executor = ThreadPoolExecutor(self._threads, "errands-api")
        self._pool = ConnectionPool(
            self._url,
            min_size=1,
            max_size=self._threads,
            kwargs={"autocommit": True, **pooling_options(self._pgbouncer)},
            configure=configure_session,
            timeout=5,
            open=True,
        )
        self._finishes = FinishWaits(self._url, pooling_options(self._pgbouncer))

    def close(self) -> None:
        if self._finishes is not None:
            self._finishes.close()
        if self._pool is not None:
            self._pool.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- requests --------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            response = await self._answer(Request.from_scope(dict(scope)), receive)
        except HTTPError as exc:
            response = exc.response()
        except psycopg.OperationalError as exc:
            _log_database_error("database unavailable", exc)
            response = HTTPError(
                503, "database_unavailable", "the database is unavailable"
            ).response()
        except psycopg.errors.CheckViolation as exc:
            # A value the validation let through and a check refused: nothing was stored.
            _log_database_error("a check refused a request that passed validation", exc, "warning")
            constraint = exc.diag.constraint_name or "a constraint"
            response = HTTPError(
                422, "invalid_request", f"the database refused the request ({constraint})"
            ).response()
        except psycopg.Error as exc:
            _log_database_error("unexpected database error", exc)
            response = _internal_error()
        except Exception:
            _log.exception("unexpected error", method=scope["method"], path=scope["path"])
            response = _internal_error()
        await _send(send, response)
        quiet = scope["path"] in PROBE_PATHS and response.status < 500
        (_log.debug if quiet else _log.info)(
            "request",
            method=scope["method"],
            path=scope["path"],
            status=response.status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            job_id=response.job_id,
        )

    async def _answer(self, request: Request, receive: Receive) -> Response:
        _check_framing(request)
        if self._ui is not None and self._ui.serves(request.path):
            # The dashboard authenticates with its own session cookie.
            if request.method == "POST":
                request.body = await _read_body(request, receive)
            return await self._on_thread(self._ui.handle, request, self._connection)
        if request.path not in OPEN_PATHS:
            # Before routing: without a token, not even which paths exist is told.
            self._authenticate(request)
        route = self._route(request)
        request.values = _query_values(route, request)
        if request.method == "POST":
            request.body = await _read_body(request, receive)
        if route.handler is None:
            return (
                self._openapi
                if request.path == "/openapi.json"
                else Response.json(200, {"status": "ok"})
            )
        if route.handler is endpoints.get_job and request.values.get("wait"):
            return await self._long_poll(request, receive)
        return await self._in_thread(route.handler, request)

    async def _long_poll(self, request: Request, receive: Receive) -> Response:
        """GET /jobs/{id}?wait=SECONDS: the job once it has finished, or when the time is up.

        The wait holds no request thread and no pooled connection (see longpoll.py).
        """
        seconds: float = request.values["wait"]
        assert self._finishes is not None, "the application was not started"
        async with self._finishes.watching(endpoints.job_id(request)) as heard:
            job = await self._in_thread(endpoints.read_job, request)
            if not is_finished(job):
                await until_heard(heard, seconds, receive)
                job = await self._in_thread(endpoints.read_job, request)
        return endpoints.job_response(job)

    async def _in_thread(self, handler: Callable[[Conn, Request], T], request: Request) -> T:
        """Run `handler` on a request thread with a pooled connection."""
        return await self._on_thread(self._with_connection, handler, request)

    async def _on_thread(self, work: Callable[..., T], *args: Any) -> T:
        """Run `work` on a request thread; 503 while too many requests are in hand."""
        if self._in_flight >= self._max_in_flight:
            raise HTTPError(
                503,
                "overloaded",
                f"more than {self._max_in_flight} requests at once; try again shortly",
                headers=[("Retry-After", "1")],
            )
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)
        finally:
            self._in_flight -= 1

    def _route(self, request: Request) -> Route:
        allowed = []
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match:
                if route.method == request.method:
                    request.params = match.groupdict()
                    return route
                allowed.append(route.method)
        if allowed:
            raise HTTPError(
                405,
                "method_not_allowed",
                f"use {', '.join(allowed)}",
                headers=[("Allow", ", ".join(allowed))],
            )
        raise HTTPError(404, "not_found", f"no such endpoint: {request.method} {request.path}")

    def _authenticate(self, request: Request) -> None:
        if not self._tokens:
            return
        wait = self._guesses.wait_seconds(request.client)
        if wait:
            raise HTTPError(
                429,
                "too_many_refused_tokens",
                f"too many refused tokens from this address; try again in {wait} s",
                headers=[("Retry-After", str(wait))],
            )
        scheme, _, token = request.headers.get("authorization", b"").partition(b" ")
        presented = token.strip()
        # Compare with every token, so the time taken says nothing about which one nearly matched.
        matches = [hmac.compare_digest(presented, known) for known in self._tokens]
        if scheme.lower() != b"bearer" or not any(matches):
            if "authorization" in request.headers:  # a guess; a request without one is not
                self._guesses.refused(request.client)
            raise HTTPError(
                401,
                "unauthorized",
                "send Authorization: Bearer <token> with one of the configured tokens",
                headers=[("WWW-Authenticate", 'Bearer realm="errands"')],
            )

    def _with_connection(self, handler: Callable[[Conn, Request], T], request: Request) -> T:
        with self._connection() as conn:
            return handler(conn, request)

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        assert self._pool is not None, "the application was not started"
        return self._pool.connection()


def _check_framing(request: Request) -> None:
    """400 for a header that must come once and came twice; 501 for a transfer coding."""
    for name in SINGLE_HEADERS:
        if name in request.repeated:
            raise HTTPError(400, "bad_request", f"the {name} header must be sent once")
    codings = request.headers.get("transfer-encoding", b"chunked").lower().split(b",")
    if [coding.strip() for coding in codings] != [b"chunked"]:
        raise HTTPError(
            501, "not_implemented", "the only transfer coding understood is chunked, alone"
        )


def _query_values(route: Route, request: Request) -> dict[str, Any]:
    """The route's query parameters, parsed by their rules; 422 naming each problem."""
    counts = Counter(name for name, _ in request.query)
    errors = [FieldError(name, "must be given once") for name, n in counts.items() if n > 1]
    values, problems = parse_fields(
        route.query, dict(request.query), text=True, unknown="unknown query parameter"
    )
    errors += problems
    if errors:
        raise invalid(errors)
    return values


def _log_database_error(event: str, exc: psycopg.Error, level: str = "error") -> None:
    """Named, never quoted: the text of a database error may quote the values (a check
    violation's DETAIL is the failing row, payload included)."""
    diag = exc.diag
    getattr(_log, level)(
        event,
        error=type(exc).__name__,
        sqlstate=exc.sqlstate,
        table=diag.table_name,
        column=diag.column_name,
        constraint=diag.constraint_name,
    )


def _internal_error() -> Response:
    return HTTPError(500, "internal_error", "unexpected error; see the server log").response()


async def _read_body(request: Request, receive: Receive) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed the limit."""
    declared = request.headers.get("content-length", b"")
    if declared.isdigit() and (len(declared) > 9 or int(declared) > MAX_BODY_BYTES):
        raise _too_large()
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(400, "client_disconnected", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large() -> HTTPError:
    return HTTPError(413, "payload_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")


async def _send(send: Send, response: Response) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in response.headers),
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
