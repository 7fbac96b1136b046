"""Django's task framework on errands (extra `errands[django]`; docs/guides/django.md).

    INSTALLED_APPS = [..., "errands.contrib.django"]  # for `manage.py errands_worker`
    TASKS = {"default": {"BACKEND": "errands.contrib.django.ErrandsBackend"}}

Serves `django.tasks` (Django 6.0 and later) and the `django-tasks` backport
(Django 5.2), whichever is installed.
"""

# First: without Django's task framework, it says what to install.
from errands.contrib.django import compat  # noqa: F401
from errands.contrib.django.backend import ErrandsBackend

__all__ = ["ErrandsBackend"]
