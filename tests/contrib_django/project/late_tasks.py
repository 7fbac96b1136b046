"""A task module of the project (the settings' package, no installed app) that nothing
imports before the runner meets a job naming it."""

from __future__ import annotations

from django_tasks import task


@task()
def double(n: int) -> int:
    return 2 * n
