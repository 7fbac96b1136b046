"""Apply the numbered migrations in order, once, even when processes race.

Every process that touches the queue calls `migrate` on first use, so it has to
be cheap when there is nothing to do and safe when two start at once: the
check-and-apply runs in one transaction under an advisory lock, and DDL in
PostgreSQL is transactional, so a failed migration leaves nothing half-done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

# Any constant unique to errands; shared by every host migrating one database.
_MIGRATION_LOCK = 0x6572_7261_6E64_0001

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """The migrations shipped in `errands/schema/migrations`, in version order."""
    migrations = []
    for entry in resources.files("errands.schema").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            migrations.append(
                Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8"))
            )
    return sorted(migrations, key=lambda m: m.version)


def applied_versions(conn: psycopg.Connection[Any]) -> set[int]:
    """Versions already recorded; empty on a database errands has never seen."""
    exists = conn.execute("select to_regclass('errands_migrations') is not null").fetchone()
    if not exists or not exists[0]:
        return set()
    return {row[0] for row in conn.execute("select version from errands_migrations")}


def migrate(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Bring the schema up to date; returns the migrations this call applied."""
    pending = _pending(conn)
    if not pending:
        return []
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "create table if not exists errands_migrations ("
            " version integer primary key,"
            " name text not null,"
            " applied_at timestamptz not null default now())"
        )
        # Another process may have applied them while we waited for the lock.
        pending = _pending(conn)
        for migration in pending:
            conn.execute(migration.sql.encode())
            conn.execute(
                "insert into errands_migrations (version, name) values (%s, %s)",
                (migration.version, migration.name),
            )
    return pending


def _pending(conn: psycopg.Connection[Any]) -> list[Migration]:
    done = applied_versions(conn)
    return [m for m in available_migrations() if m.version not in done]
