"""A Django task that can be imported but lies outside the test project (no installed app,
not the settings' package): the runner must refuse a job naming it without importing it."""

from __future__ import annotations

from django_tasks import task


@task()
def shout(text: str) -> str:
    return text.upper()
