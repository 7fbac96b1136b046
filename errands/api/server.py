"""Serving the API with uvicorn, in this process: for `errands api` and `errands run`'s child.

uvicorn (with httptools and uvloop) is a well-kept production server: it
handles keep-alive and graceful shutdown; transport.py adds the limits on
headers, slow clients and connections that it lacks. The application stays a
thin synchronous shim over the queue functions.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn

from errands.api.app import App, Readiness
from errands.api.sockets import BACKLOG
from errands.api.transport import DEFAULT_LIMITS, Limits, protocol


def config(app: App, limits: Limits = DEFAULT_LIMITS, **options: Any) -> uvicorn.Config:
    """The server's settings, the same for `errands api`, `errands run` and the tests."""
    return uvicorn.Config(
        app,
        loop="uvloop",
        http=protocol(limits),
        ws="none",
        lifespan="on",
        access_log=False,  # the application logs one structured line per request
        log_config=None,
        server_header=False,
        timeout_keep_alive=round(limits.keep_alive),
        limit_concurrency=None,  # the application limits requests, transport.py connections
        backlog=BACKLOG,
        **options,
    )


def serve(
    database_url: str,
    sock: socket.socket,
    tokens: tuple[str, ...],
    lease_seconds: float,
    grace_seconds: float,
    readiness: Readiness | None = None,
    ui: bool = True,
    pgbouncer: bool = False,
) -> int:
    """Serve on `sock` until SIGTERM/SIGINT, then finish in-flight requests; the exit code."""
    app = App(database_url, tokens, lease_seconds, readiness=readiness, ui=ui, pgbouncer=pgbouncer)
    server = uvicorn.Server(config(app, timeout_graceful_shutdown=max(1, round(grace_seconds))))
    server.run(sockets=[sock])
    return 0 if server.started else 1
