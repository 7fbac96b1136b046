"""The application's own database, as Django configures it: its connection and its URL.

Jobs are written through Django's connection for the backend's alias, so that
they commit or roll back with the application's transaction. The URL of that
same database serves errands' reads and the worker daemon, so that there is one
place where the database is configured: Django's DATABASES.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from psycopg.conninfo import make_conninfo

# What libpq understands; Django's connection parameters also hold psycopg's
# (context, cursor_factory, prepare_threshold), which are no part of a URL.
_LIBPQ_KEYWORDS = frozenset(d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults())


def check_alias(alias: str) -> None:
    """Refuse, before anything is enqueued, a database errands cannot share a transaction with."""
    if alias not in connections.settings:
        raise ImproperlyConfigured(
            f"errands: the database alias {alias!r} is not in DATABASES "
            f"(known: {', '.join(connections.settings)})"
        )
    wrapper = connections[alias]
    if wrapper.vendor != "postgresql":
        raise ImproperlyConfigured(
            f"errands: the database {alias!r} uses Django's {wrapper.vendor} backend; errands "
            "enqueues through Django's connection, so it must be PostgreSQL"
        )
    # Imported only now: the module imports psycopg or psycopg2, whichever is there.
    from django.db.backends.postgresql.psycopg_any import is_psycopg3  # noqa: PLC0415

    if not is_psycopg3:
        raise ImproperlyConfigured(
            f"errands: Django's connection to {alias!r} runs on psycopg2; errands enqueues "
            "through it with psycopg 3: pip install 'psycopg[binary]' (Django prefers it)"
        )


def connection(alias: str) -> psycopg.Connection[Any]:
    """Django's open psycopg connection for `alias`, in whatever transaction Django has open."""
    wrapper = connections[alias]
    # Refused inside an atomic block that already failed, as Django refuses any query there.
    wrapper.validate_no_broken_transaction()
    wrapper.ensure_connection()  # in the calling thread; Django refuses it on an event loop
    raw: psycopg.Connection[Any] = wrapper.connection
    return raw


def url(alias: str) -> str:
    """A libpq connection string for the database Django reaches as `alias`."""
    params = connections[alias].get_connection_params()
    return make_conninfo(
        "", **{k: v for k, v in params.items() if k in _LIBPQ_KEYWORDS and v is not None}
    )
