"""Finding the database and opening connections to it, on a schema this code may run against."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from errands import embedded
from errands.config import Settings
from errands.errors import ConfigurationError
from errands.log import get_logger
from errands.schema.migrator import check

_log = get_logger("errands.database")
_checked: set[str] = set()
_check_lock = threading.Lock()


def resolve_url(settings: Settings, *, start_embedded: bool = False) -> str:
    """The configured database URL, or that of the embedded development database.

    Only `errands run` starts the embedded database (`start_embedded`); every other
    command and `Client()` use it while it runs, and otherwise stop with one line
    naming ERRANDS_DATABASE_URL, rather than start a second server of their own.
    """
    if settings.database_url:
        return settings.database_url
    data_dir = settings.data_dir or embedded.default_data_dir()
    url = embedded.url_if_running(data_dir)
    started = url is None
    if url is None:
        if not start_embedded:
            raise ConfigurationError(embedded.NOT_RUNNING.format(data_dir=data_dir))
        url = embedded.start(data_dir)
    # Once per data directory: when errands starts the server, not for every command after.
    (_log.warning if started else _log.debug)(
        "using the embedded development PostgreSQL; set ERRANDS_DATABASE_URL in production",
        data_dir=str(data_dir),
        url=url,
    )
    return url


def pooling_options(pgbouncer: bool) -> dict[str, Any]:
    """psycopg connection arguments for a database reached directly or through a pooler.

    Behind a transaction pooler each transaction may run on another server
    connection, where a statement psycopg prepared on the previous one does not
    exist (PgBouncer tracks them only from 1.21): preparation is turned off.
    """
    return {"prepare_threshold": None} if pgbouncer else {}


def dead_peer_settings(lease_seconds: float) -> dict[str, int]:
    """libpq's TCP settings that find a silently dead peer well within a lease of this length.

    With L the lease: a statement whose data goes unacknowledged for L/3 fails
    (tcp_user_timeout), an idle connection is probed after L/3 of silence and
    dropped some seconds after its probes go unanswered (keepalives), and a
    connection attempt gives up after L/3 (connect_timeout; libpq's floor is 2 s).
    Whole seconds where libpq wants them. A Unix-socket connection ignores all but
    connect_timeout. docs/explanation/dead-peers.md.
    """
    third = lease_seconds / 3
    return {
        "keepalives": 1,
        "keepalives_idle": max(1, int(third)),
        "keepalives_interval": max(1, int(lease_seconds / 9)),
        "keepalives_count": 3,
        "tcp_user_timeout": max(1000, int(third * 1000)),
        "connect_timeout": max(2, math.ceil(third)),
    }


def statement_deadline(lease_seconds: float) -> float:
    """How long a lease keeper's or supervisor's statement may take before its connection is
    cut: a third of the lease, when the next renewal falls due, and at least a second."""
    return max(1.0, lease_seconds / 3)


def with_dead_peer_detection(url: str, lease_seconds: float) -> str:
    """`url` with `dead_peer_settings` for each of them it does not set itself (it wins)."""
    given = conninfo_to_dict(url)
    missing = {k: v for k, v in dead_peer_settings(lease_seconds).items() if k not in given}
    return make_conninfo(url, **missing) if missing else url


# Whatever the server's, database's or role's defaults (or PGTZ, or `options` in the URL),
# errands reads its rows under these settings: timestamps in UTC, since a local zone
# moves year 1 and 9999 outside what Python's datetime holds (Kiritimati is UTC+14), in the
# ISO styles psycopg can parse. Set with SET-like calls rather than startup `options`, which
# PgBouncer refuses; PgBouncer tracks these parameters and keeps them per client.
_CONFIGURE_SESSION = """
select set_config('timezone', 'UTC', false),
       set_config('datestyle', 'ISO, YMD', false),
       set_config('intervalstyle', 'postgres', false),
       set_config('application_name',
                  coalesce(nullif(current_setting('application_name'), ''), 'errands'), false)
"""


def configure(conn: psycopg.Connection[Any]) -> None:
    """Fix the session settings errands depends on; every connection errands opens gets it.

    Also the `configure` callback of the connection pools. An application name
    given in the URL is kept; otherwise the session is named `errands`.
    """
    conn.execute(_CONFIGURE_SESSION)
    if not conn.autocommit:
        conn.commit()  # a rollback would undo the settings


async def configure_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """`configure`, for the AsyncClient's pool."""
    await conn.execute(_CONFIGURE_SESSION)
    if not conn.autocommit:
        await conn.commit()


def open_connection(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection with errands' session settings (no schema check: for tools and the harness)."""
    conn = psycopg.connect(url, **kwargs)
    try:
        configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection to a database whose schema this code may run against.

    The schema is checked once per process and database; a mismatch raises
    SchemaMismatch with one line naming what to do (`errands migrate`, most often).
    """
    conn = open_connection(url, autocommit=True, **kwargs)
    try:
        check_schema(conn, url)
    except BaseException:
        conn.close()
        raise
    return conn


def check_schema(conn: psycopg.Connection[Any], url: str) -> None:
    """Refuse a schema this code may not run against, once per process and database."""
    if url in _checked:
        return
    with _check_lock:
        if url not in _checked:
            if newer := check(conn):
                _log.info(
                    "the database was migrated by a newer errands; its migrations declare "
                    "that older code runs",
                    newer=[m.label for m in newer],
                )
            _checked.add(url)


def connect_retrying(
    url: str, *, give_up: Callable[[], bool] = lambda: False, **kwargs: Any
) -> psycopg.Connection[Any] | None:
    """Connect, retrying with backoff while the database is unreachable.

    Returns None only when `give_up()` turns true first (the process is stopping).
    """
    delay = 0.05
    while not give_up():
        try:
            return connect(url, **kwargs)
        except psycopg.OperationalError as exc:
            _log.warning("database unreachable; retrying", retry_in=round(delay, 2), error=str(exc))
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    return None


class LazyConnection:
    """The one connection of a long-running loop: opened on first use, dropped after an error.

    A dropped connection is opened again by the next `get()`; callers catch
    `psycopg.OperationalError`, call `drop()` and carry on, so a database
    restart costs them a reconnect, never the process. Its URL gets the
    dead-peer settings of the lease, and `cut()` or a `within()` deadline ends a
    statement that a peer which stopped answering without closing would hold
    for ever.
    """

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float,
        on_connect: Callable[[psycopg.Connection[Any]], None] | None = None,
        pgbouncer: bool = False,
        quiet_after_failure: float = 0.0,
    ) -> None:
        self._url = with_dead_peer_detection(url, lease_seconds)
        self._pgbouncer = pgbouncer
        self._on_connect = on_connect
        # For this long after a failure, `get()` fails at once instead of connecting: a
        # loop with other duties (the supervisor's) spends no connect_timeout on each turn.
        self._quiet_after_failure = quiet_after_failure
        self._failed_at = -math.inf
        self._conn: psycopg.Connection[Any] | None = None
        # A duplicate of the connection's socket, owned here: shutting it down from
        # another thread wakes a statement blocked on it, and its descriptor can
        # never be a reused number, whatever libpq did with its own.
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._armed: object | None = None  # the `within()` under way

    @property
    def current(self) -> psycopg.Connection[Any] | None:
        """The open connection, if any, without connecting."""
        if self._conn is not None and self._conn.closed:
            self.close()
        return self._conn

    def get(self) -> psycopg.Connection[Any]:
        """The open connection, or a new one (OperationalError when the database is down)."""
        if (conn := self.current) is None:
            if time.monotonic() < self._failed_at + self._quiet_after_failure:
                raise psycopg.OperationalError("the database failed a moment ago; not retried yet")
            try:
                conn = self._opened(connect(self._url, **pooling_options(self._pgbouncer)))
            except psycopg.OperationalError:
                self._failed_at = time.monotonic()
                raise
        return conn

    def get_retrying(self, give_up: Callable[[], bool]) -> psycopg.Connection[Any] | None:
        """The open connection, or a new one once the database answers; None if `give_up()`."""
        if (conn := self.current) is None:
            options = pooling_options(self._pgbouncer)
            new = connect_retrying(self._url, give_up=give_up, **options)
            conn = None if new is None else self._opened(new)
        return conn

    @contextlib.contextmanager
    def within(self, seconds: float) -> Iterator[psycopg.Connection[Any]]:
        """The connection, cut if what the caller does with it takes longer than `seconds`.

        The statement under way then fails with OperationalError at once, as if
        the server had closed the connection; connecting is bounded by the URL's
        connect_timeout.
        """
        conn = self.get()
        armed = self._armed = object()
        timer = threading.Timer(seconds, self._cut_if_still, args=(armed,))
        timer.daemon = True
        timer.start()
        try:
            yield conn
        finally:
            with self._lock:
                self._armed = None
            timer.cancel()

    def cut(self) -> None:
        """Shut the connection's socket down under whoever uses it (any thread may call this)."""
        with self._lock:
            self._shutdown()

    def _cut_if_still(self, armed: object) -> None:
        with self._lock:
            if self._armed is armed:
                _log.warning("database statement past its deadline; connection cut")
                self._shutdown()

    def _shutdown(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)

    def _opened(self, conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
        with self._lock:
            self._conn = conn
            self._socket = socket.socket(fileno=os.dup(conn.fileno()))
        if self._on_connect is not None:
            self._on_connect(conn)
        return conn

    def drop(self, exc: Exception | None = None) -> None:
        """Close after an error (logged when given and a connection was open); the next
        `get()` reconnects."""
        if self._conn is None:
            return  # connecting failed: get() knows, and its caller said so
        if exc is not None:
            _log.warning("database connection lost; reconnecting", error=str(exc))
        self._failed_at = time.monotonic()
        self.close()

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            sock, self._socket = self._socket, None
        if conn is not None:
            conn.close()
        if sock is not None:
            sock.close()
