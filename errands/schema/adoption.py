"""Adopting the migration records errands kept before checksums.

Until checksums, `errands_migrations` held a version and a name per applied
migration, and three migrations changed after databases had applied them:
0001_jobs gained the `attempt_budget` column (and its check), 0005_queues the
`errands_jobs_retryable` index, and 0007 was renamed from `cheap_name_checks`
to `name_checks_worker_identity` when it gained the worker identity columns.
A record cannot tell which contents were applied, so adoption repairs each
recorded migration to what its file now makes (every repair is a no-op where
the newer contents were applied), then records the files' checksums. Anything
else recorded that this code does not ship stops adoption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from errands.errors import SchemaMismatch

if TYPE_CHECKING:
    from errands.schema.migrator import Migration

_log = structlog.get_logger("errands.schema")

_FORMER_NAMES = {(7, "cheap_name_checks"): "name_checks_worker_identity"}

# What each migration's first contents lacked, made idempotent.
_REPAIRS = {
    1: """
do $$ begin
    if not exists (select from pg_attribute where attrelid = 'errands_jobs'::regclass
                   and attname = 'attempt_budget' and not attisdropped) then
        -- The budget a job was enqueued with: what max_attempts meant before retries
        -- granted a budget anew (a retry then reset attempts to 0).
        alter table errands_jobs add column attempt_budget integer;
        update errands_jobs set attempt_budget = max_attempts;
        alter table errands_jobs
            alter column attempt_budget set default 5,
            alter column attempt_budget set not null,
            drop constraint errands_jobs_budget,
            add constraint errands_jobs_budget check (
                max_attempts >= 1 and attempt_budget >= 1 and attempts between 0 and max_attempts);
    end if;
end $$;
""",
    5: """
create index if not exists errands_jobs_retryable on errands_jobs (queue, state, id)
    where state in ('dead', 'cancelled');
""",
    7: """
alter table errands_workers
    add column if not exists boot_id text,
    add column if not exists pid_namespace text,
    add column if not exists process_started bigint;
""",
}


def adopt(conn: psycopg.Connection[Any], shipped: Sequence[Migration]) -> None:
    """Turn checksum-less records into checked ones, inside the caller's transaction."""
    by_version = {m.version: m for m in shipped}
    recorded = conn.execute("select version, name from errands_migrations order by version")
    adopted = []
    for version, name in recorded.fetchall():
        migration = by_version.get(version)
        current = _FORMER_NAMES.get((version, name), name)
        if migration is None or migration.name != current:
            raise SchemaMismatch(
                f"the database records migration {version:04d}_{name}, which this errands "
                "does not ship: it was migrated by another version; nothing was changed"
            )
        if version in _REPAIRS:
            conn.execute(_REPAIRS[version].encode())
        adopted.append(migration)
    conn.execute(
        "alter table errands_migrations"
        " add column checksum text, add column older_code_runs boolean"
    )
    for migration in adopted:
        conn.execute(
            "update errands_migrations set name = %s, checksum = %s, older_code_runs = %s"
            " where version = %s",
            (migration.name, migration.checksum, migration.older_code_runs, migration.version),
        )
    conn.execute(
        "alter table errands_migrations"
        " alter column checksum set not null, alter column older_code_runs set not null"
    )
    _log.warning(
        "adopted the migration records of an errands from before checksums",
        adopted=[m.label for m in adopted],
    )
