"""Numbered SQL migrations: applied by `errands migrate`, recorded with a checksum, checked by
every process before it uses the database.

A migration is a file `NNNN_name.sql` in `migrations/`. Its leading comment
says whether code from before it keeps working once it is applied:

    -- older code: runs     (additive: new tables, columns with defaults, indexes)
    -- older code: stops    (anything else; also what a file that says nothing means)

`migrate` applies the pending ones in version order, in one transaction under
an advisory lock (DDL is transactional in PostgreSQL: a failed migration
leaves nothing half-done, and concurrent runs apply each migration once), and
records each with the SHA-256 of its file. `check` is what processes run
instead: it refuses a database whose schema is behind the code, one whose
applied migrations were edited since, and one migrated by newer code unless
every migration this code does not know says older code runs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import psycopg

from errands.errors import SchemaMismatch
from errands.schema import adoption

# Any constant unique to errands; shared by every host migrating one database.
_MIGRATION_LOCK = 0x6572_7261_6E64_0001

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
_OLDER_CODE = re.compile(r"^--\s*older code:\s*(runs|stops)\b", re.MULTILINE)

_CREATE_TABLE = """
create table if not exists errands_migrations (
    version         integer primary key,
    name            text not null,
    checksum        text not null,       -- SHA-256 of the file as applied
    older_code_runs boolean not null,    -- its `-- older code:` declaration
    applied_at      timestamptz not null default now()
)
"""

_RECORD = """
insert into errands_migrations (version, name, checksum, older_code_runs)
values (%s, %s, %s, %s)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def older_code_runs(self) -> bool:
        """Whether code from before this migration still runs once it is applied."""
        match = _OLDER_CODE.search(self.sql)
        return match is not None and match.group(1) == "runs"


@dataclass(frozen=True)
class Applied:
    """A migration as the database recorded it."""

    version: int
    name: str
    checksum: str
    older_code_runs: bool

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@cache
def available_migrations() -> tuple[Migration, ...]:
    """The migrations shipped in `errands/schema/migrations`, in version order."""
    migrations = []
    for entry in resources.files("errands.schema").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            migrations.append(
                Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8"))
            )
    return tuple(sorted(migrations, key=lambda m: m.version))


def applied_versions(conn: psycopg.Connection[Any]) -> set[int]:
    """Versions recorded, with or without checksums; empty on a database errands never saw."""
    if not _table_exists(conn):
        return set()
    return {row[0] for row in conn.execute("select version from errands_migrations")}


def migrate(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Bring the schema up to date (`errands migrate`); returns the migrations applied.

    Records written by errands before checksums are adopted first (adoption.py).
    Raises SchemaMismatch, having changed nothing, when an applied migration was
    edited or the database was migrated by newer code that older code may not run.
    """
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        if _table_exists(conn) and not _has_checksums(conn):
            adoption.adopt(conn, available_migrations())
        conn.execute(_CREATE_TABLE)
        applied = _applied(conn)
        _refuse_edited(applied)
        pending = [m for m in available_migrations() if m.version not in applied]
        for migration in pending:
            conn.execute(migration.sql.encode())
            conn.execute(
                _RECORD,
                (migration.version, migration.name, migration.checksum, migration.older_code_runs),
            )
        _refuse_newer(applied)
    return pending


def check(conn: psycopg.Connection[Any]) -> list[Applied]:
    """Refuse (SchemaMismatch) a schema this code may not run against.

    Returns the migrations newer than this code that the database holds: each
    declared that older code runs (a rolling deploy's new release migrated first).
    """
    if not _table_exists(conn):
        raise SchemaMismatch(
            "the database has no errands schema: run `errands migrate` (the database URL is right?)"
        )
    if not _has_checksums(conn):
        raise SchemaMismatch(
            "the database's migrations were recorded by an older errands, without checksums: "
            "run `errands migrate` to adopt them"
        )
    applied = _applied(conn)
    _refuse_edited(applied)
    pending = [m.label for m in available_migrations() if m.version not in applied]
    if pending:
        raise SchemaMismatch(
            f"the database schema is behind this errands ({', '.join(pending)} not applied): "
            "run `errands migrate`"
        )
    return _refuse_newer(applied)


def _table_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("select to_regclass('errands_migrations') is not null").fetchone()
    return bool(row and row[0])


def _has_checksums(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "select exists (select from pg_attribute"
        " where attrelid = 'errands_migrations'::regclass"
        " and attname = 'checksum' and not attisdropped)"
    ).fetchone()
    return bool(row and row[0])


def _applied(conn: psycopg.Connection[Any]) -> dict[int, Applied]:
    rows = conn.execute(
        "select version, name, checksum, older_code_runs from errands_migrations"
    ).fetchall()
    return {row[0]: Applied(*row) for row in rows}


def _refuse_edited(applied: dict[int, Applied]) -> None:
    for migration in available_migrations():
        recorded = applied.get(migration.version)
        if recorded is not None and (recorded.name, recorded.checksum) != (
            migration.name,
            migration.checksum,
        ):
            raise SchemaMismatch(
                f"migration {recorded.label} was applied to this database as it was then, and "
                f"this errands ships {migration.label} with other contents (checksum "
                f"{migration.checksum[:12]}, recorded {recorded.checksum[:12]}): a released "
                "migration must never be edited; install the errands that applied it, or a "
                "later one that ships it unchanged"
            )


def _refuse_newer(applied: dict[int, Applied]) -> list[Applied]:
    """The applied migrations this code does not know, if older code may run against each."""
    known = {m.version for m in available_migrations()}
    newer = sorted((a for a in applied.values() if a.version not in known), key=lambda a: a.version)
    stops = [a.label for a in newer if not a.older_code_runs]
    if stops:
        raise SchemaMismatch(
            f"the database was migrated by a newer errands ({', '.join(stops)}), and code from "
            "before that migration must not run against it: upgrade errands"
        )
    return newer
