"""Serving the API with uvicorn, in this process: for `errands api` and `errands run`'s child.

uvicorn (with httptools and uvloop) is a well-kept production server: it
handles keep-alive, slow clients and graceful shutdown, and bounds concurrency;
the application stays a thin synchronous shim over the queue functions.
"""

from __future__ import annotations

import uvicorn

from errands.api.app import App


def serve(
    database_url: str,
    host: str,
    port: int,
    tokens: tuple[str, ...],
    lease_seconds: float,
    grace_seconds: float,
    pgbouncer: bool = False,
) -> int:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests; returns the exit code."""
    config = uvicorn.Config(
        App(database_url, tokens, lease_seconds, pgbouncer=pgbouncer),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,  # the application logs one structured line per request
        log_config=None,
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=max(1, round(grace_seconds)),
        limit_concurrency=2048,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
