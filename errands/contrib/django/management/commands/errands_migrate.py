"""`manage.py errands_migrate`: `errands migrate` on the database of Django's errands backend.

Creates or updates errands' tables (all named `errands_…`) in the database
Django reaches for the backend's DATABASE alias; safe to run on every deploy.
Runs in the calling process, so `call_command("errands_migrate")` prepares a
test database too.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from errands.contrib.django.management import backend_argument, errands_backend
from errands.database import open_connection
from errands.schema.migrator import migrate


class Command(BaseCommand):
    help = "Create or update errands' tables in the database of Django's errands backend."

    def add_arguments(self, parser: CommandParser) -> None:
        backend_argument(parser, "whose database to migrate")

    def handle(self, *args: Any, **options: Any) -> None:
        url = errands_backend(options["backend"]).database_url()
        with open_connection(url, autocommit=True) as conn:
            applied = migrate(conn)
        for migration in applied:
            self.stdout.write(f"applied {migration.version:04d}_{migration.name}")
        if not applied:
            self.stdout.write("up to date")
