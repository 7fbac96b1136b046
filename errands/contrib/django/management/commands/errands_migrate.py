"""`manage.py errands_migrate`: `errands migrate` on the database of Django's errands backend.

Creates or updates errands' tables (all named `errands_…`) in the database
Django reaches for the backend's DATABASE alias; safe to run on every deploy.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from errands.cli import main as errands_main
from errands.contrib.django.management import backend_argument, errands_backend


class Command(BaseCommand):
    help = "Create or update errands' tables in the database of Django's errands backend."

    def add_arguments(self, parser: CommandParser) -> None:
        backend_argument(parser, "whose database to migrate")

    def handle(self, *args: Any, **options: Any) -> None:
        url = errands_backend(options["backend"]).database_url()
        errands_main(["migrate", "--database-url", url])
