"""Finding the database and opening connections to it, schema brought up to date."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import structlog

from errands import embedded
from errands.config import Settings
from errands.schema import migrate

_log = structlog.get_logger("errands.database")
_migrated: set[str] = set()
_migrate_lock = threading.Lock()


def resolve_url(settings: Settings) -> str:
    """The configured database URL, or that of the embedded development database."""
    if settings.database_url:
        return settings.database_url
    url = embedded.start(settings.data_dir)
    _log.warning(
        "using the embedded development PostgreSQL; set ERRANDS_DATABASE_URL in production",
        data_dir=str(settings.data_dir or embedded.default_data_dir()),
        url=url,
    )
    return url


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
