"""Settings of the test project: the database comes from DJANGO_DATABASE_URL."""

from __future__ import annotations

import os
from typing import Any

from psycopg.conninfo import conninfo_to_dict


def database(url: str, *, pool: bool = False) -> dict[str, Any]:
    """Django's DATABASES entry for a libpq URL (through a pool of Django's, or not)."""
    params: dict[str, Any] = conninfo_to_dict(url)
    if pool:
        params["pool"] = {"min_size": 1, "max_size": 2}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", ""),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,
    }


UNSET = "dbname=unset"  # no database: the tests point Django at theirs
SECRET_KEY = "errands-tests"
USE_TZ = True
INSTALLED_APPS = [
    "django_tasks",
    "errands.contrib.django",
    "tests.contrib_django.project.shop",
]
DATABASES = {
    "default": database(os.environ.get("DJANGO_DATABASE_URL", UNSET)),
    "pooled": database(os.environ.get("DJANGO_DATABASE_URL", UNSET), pool=True),
    "local": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}
TASKS = {
    "default": {
        "BACKEND": "errands.contrib.django.ErrandsBackend",
        "QUEUES": ["default", "emails"],
    },
    "once": {  # its tasks fail for good at their first error
        "BACKEND": "errands.contrib.django.ErrandsBackend",
        "OPTIONS": {"MAX_ATTEMPTS": 1},
    },
    "anyqueue": {"BACKEND": "errands.contrib.django.ErrandsBackend", "QUEUES": []},
    "immediate": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"},
}
