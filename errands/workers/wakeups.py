"""Whether NOTIFY wakes this worker: through a transaction pooler, LISTEN goes nowhere.

PgBouncer in transaction pooling mode runs each transaction on whichever server
connection is free. A LISTEN registers on the server connection that ran it,
which then serves other clients, so notifications never come back: a worker
relying on them would sleep a whole poll interval after every enqueue. Worse,
such a worker would never notice. Hence the probe at start.
"""

from __future__ import annotations

import secrets
from typing import Any

import psycopg

from errands.database import connect_retrying
from errands.log import get_logger

PROBE_SECONDS = 2.0

_log = get_logger("errands.wakeups")

MISCONFIGURED = (
    "LISTEN/NOTIFY does not reach this worker: the database URL goes through a transaction "
    "pooler (PgBouncer with pool_mode = transaction, or similar). Set ERRANDS_PGBOUNCER=1 "
    "(or run `errands run --poll-only`), or point ERRANDS_DATABASE_URL at PostgreSQL or a "
    "session-mode pool. Falling back to polling, with server-side prepared statements off."
)


def listen_works(url: str) -> bool:
    """Whether NOTIFY reaches a LISTENing connection to `url`; says what to do when it does not.

    Waits for the database to answer, as the daemon does at start.
    """
    conn = connect_retrying(url, prepare_threshold=None, connect_timeout=5)
    assert conn is not None  # it retries until it connects
    with conn:
        works = notifications_arrive(conn, url)
    if not works:
        _log.error(MISCONFIGURED)
    return works


def notifications_arrive(
    conn: psycopg.Connection[Any], url: str, timeout: float = PROBE_SECONDS
) -> bool:
    """LISTEN on a private channel on `conn`, NOTIFY it from another connection, and wait for it."""
    channel = f"errands_probe_{secrets.token_hex(8)}"
    conn.execute(f"listen {channel}")
    try:
        with psycopg.connect(url, autocommit=True, prepare_threshold=None, connect_timeout=5) as c:
            c.execute("select pg_notify(%s, 'probe')", (channel,))
        return any(n.channel == channel for n in conn.notifies(timeout=timeout, stop_after=1))
    finally:
        conn.execute(f"unlisten {channel}")
