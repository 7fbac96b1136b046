"""The database schema: numbered SQL migrations and the runner that applies them."""

from errands.schema.migrator import Migration, applied_versions, available_migrations, migrate

__all__ = ["Migration", "applied_versions", "available_migrations", "migrate"]
