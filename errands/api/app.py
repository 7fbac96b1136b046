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
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg
import structlog
from psycopg_pool import ConnectionPool

from errands.api import endpoints
from errands.api.http import MAX_BODY_BYTES, HTTPError, Request, Response
from errands.api.openapi import document
from errands.database import pooling_options

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Handler = Callable[[psycopg.Connection[Any], Request], Response]
# Why the service is not ready beyond the database (under `errands run`: no worker
# running), or None when it is.
Readiness = Callable[[], str | None]

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
# Hit by every probe and scrape: their request lines are logged at debug, unless they fail.
PROBE_PATHS = OPEN_PATHS

_log = structlog.get_logger("errands.api")


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler | None  # None: answered without a database connection


def _routes(lease_seconds: float, readiness: Readiness | None) -> list[Route]:
    job = r"/jobs/(?P<id>\d{1,20})"
    table: list[tuple[str, str, Handler | None]] = [
        ("POST", "/jobs", endpoints.submit),
        ("POST", "/jobs/batch", endpoints.submit_batch),
        ("GET", "/jobs", endpoints.list_jobs),
        ("GET", job, endpoints.get_job),
        ("POST", job + "/retry", endpoints.retry_job),
        ("POST", job + "/cancel", endpoints.cancel_job),
        ("GET", "/stats", partial(endpoints.stats, lease_seconds=lease_seconds)),
        ("GET", "/ready", partial(endpoints.ready, readiness=readiness)),
        ("GET", "/metrics", endpoints.prometheus),
        ("GET", "/health", None),
        ("GET", "/openapi.json", None),
    ]
    return [Route(method, re.compile(f"^{path}$"), handler) for method, path, handler in table]


class App:
    """The errands HTTP API as an ASGI application."""

    def __init__(
        self,
        database_url: str,
        tokens: tuple[str, ...],
        lease_seconds: float,
        threads: int = 8,
        readiness: Readiness | None = None,
        *,
        pgbouncer: bool = False,
    ) -> None:
        self._url = database_url
        self._pgbouncer = pgbouncer
        self._tokens = [token.encode() for token in tokens]
        self._routes = _routes(lease_seconds, readiness)
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
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
            timeout=5,
            open=True,
        )

    def close(self) -> None:
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
        request = Request.from_scope(dict(scope))
        try:
            response = await self._answer(request, receive)
        except HTTPError as exc:
            response = exc.response()
        except psycopg.OperationalError as exc:
            response = HTTPError(
                503, "database_unavailable", f"the database is unavailable: {exc}"
            ).response()
        except Exception:
            _log.exception("unexpected error", method=request.method, path=request.path)
            response = HTTPError(
                500, "internal_error", "unexpected error; see the server log"
            ).response()
        await _send(send, response)
        quiet = request.path in PROBE_PATHS and response.status < 500
        (_log.debug if quiet else _log.info)(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            job_id=response.job_id,
        )

    async def _answer(self, request: Request, receive: Receive) -> Response:
        route = self._route(request)
        if request.path not in OPEN_PATHS:
            self._authenticate(request)
        if request.method == "POST":
            request.body = await _read_body(request, receive)
        if route.handler is None:
            return (
                self._openapi
                if request.path == "/openapi.json"
                else Response.json(200, {"status": "ok"})
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._with_connection, route.handler, request
        )

    def _route(self, request: Request) -> Route:
        allowed = []
        for route in self._routes:
            match = route.pattern.match(request.path)
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
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        presented = token.strip().encode()
        # Compare with every token, so the time taken says nothing about which one nearly matched.
        matches = [hmac.compare_digest(presented, known) for known in self._tokens]
        if scheme.lower() != "bearer" or not any(matches):
            raise HTTPError(
                401,
                "unauthorized",
                "send Authorization: Bearer <token> with one of the configured tokens",
                headers=[("WWW-Authenticate", 'Bearer realm="errands"')],
            )

    def _with_connection(self, handler: Handler, request: Request) -> Response:
        assert self._pool is not None, "the application was not started"
        with self._pool.connection() as conn:
            return handler(conn, request)


async def _read_body(request: Request, receive: Receive) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
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
