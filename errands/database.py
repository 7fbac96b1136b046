"""Finding the database and opening connections to it, schema brought up to date."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from errands import embedded
from errands.config import Settings
from errands.errors import ConfigurationError
from errands.log import get_logger
from errands.schema import migrate

_log = get_logger("errands.database")
_migrated: set[str] = set()
_migrate_lock = threading.Lock()


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


def open_connection(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection with errands' session settings (no migration: for tools and the harness)."""
    conn = psycopg.connect(url, **kwargs)
    try:
        configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection to a database whose schema is up to date."""
    conn = open_connection(url, autocommit=True, **kwargs)
    try:
        ensure_schema(conn, url)
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_schema(conn: psycopg.Connection[Any], url: str) -> None:
    """Apply pending migrations, once per process and database."""
    if url in _migrated:
        return
    with _migrate_lock:
        if url not in _migrated:
            for migration in migrate(conn):
                _log.info("migration applied", version=migration.version, name=migration.name)
            _migrated.add(url)


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
    restart costs them a reconnect, never the process.
    """

    def __init__(
        self,
        url: str,
        *,
        on_connect: Callable[[psycopg.Connection[Any]], None] | None = None,
        connect_timeout: int = 5,
        pgbouncer: bool = False,
    ) -> None:
        self._url = url
        self._pgbouncer = pgbouncer
        self._on_connect = on_connect
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def current(self) -> psycopg.Connection[Any] | None:
        """The open connection, if any, without connecting."""
        if self._conn is not None and self._conn.closed:
            self._conn = None
        return self._conn

    def get(self) -> psycopg.Connection[Any]:
        """The open connection, or a new one (OperationalError when the database is down)."""
        if (conn := self.current) is None:
            conn = self._opened(connect(self._url, **self._options()))
        return conn

    def get_retrying(self, give_up: Callable[[], bool]) -> psycopg.Connection[Any] | None:
        """The open connection, or a new one once the database answers; None if `give_up()`."""
        if (conn := self.current) is None:
            new = connect_retrying(self._url, give_up=give_up, **self._options())
            conn = None if new is None else self._opened(new)
        return conn

    def _options(self) -> dict[str, Any]:
        return {"connect_timeout": self._connect_timeout, **pooling_options(self._pgbouncer)}

    def _opened(self, conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
        self._conn = conn
        if self._on_connect is not None:
            self._on_connect(conn)
        return conn

    def drop(self, exc: Exception | None = None) -> None:
        """Close after an error (logged when given); the next `get()` reconnects."""
        if exc is not None:
            _log.warning("database connection lost; reconnecting", error=str(exc))
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
