"""Serving the API with uvicorn, in this process: for `errands api` and `errands run`'s child.

uvicorn (with httptools and uvloop) is a well-kept production server: it
handles keep-alive and graceful shutdown; transport.py adds the limits on
headers, slow clients and connections that it lacks. The application stays a
thin synchronous shim over the queue functions.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

import uvicorn

from errands.api.app import App, Readiness
from errands.api.transport import DEFAULT_LIMITS, Limits, protocol
from errands.errors import ConfigurationError

BACKLOG = 2048
# A supervisor killed a moment ago leaves an HTTP child that exits within a second (it
# notices the death within 0.25 s, and gives its last log line 0.5 s at most): wait that out.
BIND_PATIENCE_SECONDS = 2.0


def listen(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound now so that a taken port is one clear start-up error.

    `errands run` binds it before forking anything: the HTTP child inherits it (and a
    restarted child takes it over without a gap), so a port in use can never make the
    child crash-loop.
    """
    deadline = time.monotonic() + BIND_PATIENCE_SECONDS
    while True:
        try:
            return _bound(host, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigurationError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc} (set ERRANDS_HTTP_ADDR)"
                ) from None
            if time.monotonic() > deadline:
                raise ConfigurationError(f"port {port} is in use (set ERRANDS_HTTP_ADDR)") from None
        time.sleep(0.05)


def _bound(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
