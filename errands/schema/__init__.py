"""The database schema: numbered SQL migrations, the runner that applies them, and the check
every process makes before it uses the database."""

from errands.schema.migrator import (
    Applied,
    Migration,
    applied_versions,
    available_migrations,
    check,
    migrate,
)

__all__ = ["Applied", "Migration", "applied_versions", "available_migrations", "check", "migrate"]
