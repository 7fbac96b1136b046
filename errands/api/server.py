"""Serving the API with uvicorn, in this process: for `errands api` and `errands run`'s child.

uvicorn (with httptools and uvloop) is a well-kept production server: it
handles keep-alive and graceful shutdown; transport.py adds the limits on
headers, slow clients and connections that it lacks.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from errands.api.app import create_app
from errands.api.sockets import BACKLOG
from errands.api.transport import DEFAULT_LIMITS, Limits, protocol


def config(
    app: ASGIApp,
    limits: Limits = DEFAULT_LIMITS,
    forwarded_allow_ips: str | None = None,
    **options: Any,
) -> uvicorn.Config:
    """The server's settings, the same for `errands api`, `errands run` and the tests.

    X-Forwarded-For and X-Forwarded-Proto are believed only from the addresses in
    `forwarded_allow_ips` (FORWARDED_ALLOW_IPS), and from nowhere when it is None:
    a client must not choose the address the guess throttle counts against.
    """
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
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        **options,
    )


def serve(
    sock: socket.socket,
    grace_seconds: float,
    *,
    forwarded_allow_ips: str | None = None,
    **app_options: Any,
) -> int:
    """Serve `create_app(**app_options)` on `sock` until SIGTERM/SIGINT, then finish the
    requests in flight; the exit code."""
    server = uvicorn.Server(
        config(
            create_app(**app_options),
            forwarded_allow_ips=forwarded_allow_ips,
            timeout_graceful_shutdown=max(1, round(grace_seconds)),
        )
    )
    server.run(sockets=[sock])
    return 0 if server.started else 1
