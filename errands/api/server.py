"""Serving the API with uvicorn, in this process: for `errands api` and `errands run`'s child.

uvicorn (with httptools and uvloop) is a well-kept production server: it
handles keep-alive, slow clients and graceful shutdown, and bounds concurrency;
the application stays a thin synchronous shim over the queue functions.
"""

from __future__ import annotations

import errno
import socket

import uvicorn

from errands.api.app import App, Readiness
from errands.errors import ConfigurationError

BACKLOG = 2048


def listen(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound now so that a taken port is one clear start-up error.

    `errands run` binds it before forking anything: the HTTP child inherits it (and a
    restarted child takes it over without a gap), so a port in use can never make the
    child crash-loop.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(f"port {port} is in use (set ERRANDS_HTTP_ADDR)") from None
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (set ERRANDS_HTTP_ADDR)"
        ) from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    database_url: str,
    sock: socket.socket,
    tokens: tuple[str, ...],
    lease_seconds: float,
    grace_seconds: float,
    readiness: Readiness | None = None,
    pgbouncer: bool = False,
) -> int:
    """Serve on `sock` until SIGTERM/SIGINT, then finish in-flight requests; the exit code."""
    config = uvicorn.Config(
        App(database_url, tokens, lease_seconds, readiness=readiness, pgbouncer=pgbouncer),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,  # the application logs one structured line per request
        log_config=None,
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=max(1, round(grace_seconds)),
        limit_concurrency=2048,
        backlog=BACKLOG,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0 if server.started else 1
