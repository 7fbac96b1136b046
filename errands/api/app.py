"""The HTTP API and the dashboard as one Starlette application.

The routes come from endpoints.operations() (and the dashboard's pages); in front
of them, the request log and the gate (gate.py); behind them, the request
threads and their pooled connections (backend.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from errands.api import openapi
from errands.api.backend import MAX_IN_FLIGHT, THREADS, Backend
from errands.api.endpoints import Call, Operation, operations
from errands.api.errors import HANDLERS
from errands.api.gate import Gate, RequestLog
from errands.api.guesses import Guesses
from errands.api.inputs import body, query
from errands.api.longpoll import FinishWaits, long_poll
from errands.api.tokens import STRONG_LENGTH, Tokens
from errands.api.ui.dashboard import Dashboard
from errands.api.ui.pages import Pages
from errands.log import get_logger
from errands.queue.requests import Defaults, JobWait

# Why the service is not ready beyond the database (under `errands run`: no worker
# running), or None when it is.
Readiness = Callable[[], str | None]
Endpoint = Callable[[Request], Awaitable[Response]]

_log = get_logger("errands.api")


def create_app(
    database_url: str,
    tokens: tuple[str, ...],
    lease_seconds: float,
    *,
    threads: int = THREADS,
    max_in_flight: int = MAX_IN_FLIGHT,
    readiness: Readiness | None = None,
    ui: bool = True,
    pgbouncer: bool = False,
    defaults: Defaults | None = None,
    secret_key: str | None = None,
) -> Starlette:
    """The errands HTTP API (and, with `ui`, the dashboard) as an ASGI application.

    `defaults` gives a job submitted by task name its task's queue and budget: the
    command that loaded the task modules passes it down.
    """
    backend = Backend(database_url, threads, max_in_flight, pgbouncer=pgbouncer)
    waits = FinishWaits(database_url, backend.connect_options)
    guesses = Guesses()
    api = operations(lease_seconds, readiness, defaults)
    document = json.dumps(openapi.document(api)).encode()
    # What the application answers itself, on the event loop.
    local: dict[str, Callable[[], Response]] = {
        "/health": lambda: JSONResponse({"status": "ok"}),
        "/openapi.json": lambda: Response(document, media_type="application/json"),
    }
    by_path: dict[str, dict[str, Endpoint]] = {}
    for op in api:
        by_path.setdefault(op.route, {})[op.method] = _endpoint(op, backend, waits, local)
    # One route per path, so that a wrong method is answered 405 with every method allowed.
    routes: list[BaseRoute] = [
        Route(path, _by_method(endpoints), methods=list(endpoints))
        for path, endpoints in by_path.items()
    ]
    open_paths = frozenset(op.path for op in api if not op.token)
    dashboard = Dashboard(tokens, guesses, backend, secret_key) if ui else None
    if dashboard is not None:
        pages = Pages(dashboard, lease_seconds)
        routes += dashboard.routes(pages.table(), pages.not_found)

    def own_auth(path: str) -> bool:
        return path in open_paths or (dashboard is not None and dashboard.serves(path))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        backend.open()
        try:
            yield
        finally:
            waits.close()
            backend.close()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestLog, quiet_paths=open_paths),
            Middleware(Gate, tokens=Tokens(tokens), guesses=guesses, own_auth=own_auth),
        ],
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # /jobs/ is no endpoint: 404, not a redirect
    _warn_about(Tokens(tokens))
    return app


def _endpoint(
    op: Operation,
    backend: Backend,
    waits: FinishWaits,
    local: dict[str, Callable[[], Response]],
) -> Endpoint:
    """`op` as a Starlette endpoint: its query and body read here, its handler on a thread."""

    async def endpoint(request: Request) -> Response:
        call = Call(
            request.path_params,
            query(request.scope["query_string"], op.query),
            await body(request) if request.method in ("POST", "PATCH") else b"",
            request.headers,
        )
        try:
            if op.handler is None:
                return local[op.path]()
            if isinstance(call.query, JobWait) and call.query.wait:
                return await long_poll(backend, waits, call, call.query.wait, request.receive)
            handler = op.handler
            return await backend.with_connection(lambda conn: handler(conn, call))
        finally:
            request.state.job_id = call.job_id

    return endpoint


def _by_method(endpoints: dict[str, Endpoint]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        # HEAD is GET's, as Starlette routes it.
        return await endpoints[request.method if request.method != "HEAD" else "GET"](request)

    return endpoint


def _warn_about(tokens: Tokens) -> None:
    if not tokens.required:
        _log.warning("ERRANDS_API_TOKENS is not set: the API accepts every request unauthenticated")
    elif tokens.weak:
        _log.warning(
            f"{tokens.weak} of ERRANDS_API_TOKENS is shorter than {STRONG_LENGTH} characters: "
            "a right guess is never refused, so make tokens long (openssl rand -hex 32)"
        )
