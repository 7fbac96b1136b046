"""Django configured in the test process, on each test's own database.

Django's settings are configured once per process: here, when pytest collects
these tests (their modules import the test project's tasks, which need them).
Each test then points the `default` alias at its own database.
"""

from __future__ import annotations

from collections.abc import Iterator

import django
import pytest
from django.conf import settings
from django.db import connections

from errands.contrib.django.backend import close_clients
from tests.contrib_django.project import settings as project_settings

if not settings.configured:
    settings.configure(
        **{
            name: getattr(project_settings, name)
            for name in dir(project_settings)
            if name.isupper()
        }
    )
    django.setup()


def use_database(url: str) -> None:
    """Point Django's PostgreSQL aliases at the database at `url`, closing what they had open."""
    connections.close_all()
    close_clients()
    for alias in ("default", "pooled"):
        connections[alias].close_pool()
        pool = bool(connections.settings[alias]["OPTIONS"].get("pool"))
        connections.settings[alias].update(project_settings.database(url, pool=pool))


@pytest.fixture
def django_db(db_url: str) -> Iterator[str]:
    """This test's database, as Django's `default` (and the errands backends')."""
    use_database(db_url)
    yield db_url
    use_database(project_settings.UNSET)
