"""The shop's tasks, each showing one thing a Django task can do on errands."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from django.db import connection
from django_tasks import task


class OutOfStock(Exception):
    pass


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="emails", priority=10)
def send_welcome(to: str) -> dict[str, Any]:
    return {"sent": to}


@task(backend="once")
def reserve(sku: str) -> None:
    raise OutOfStock(f"no {sku} left")


@task(takes_context=True)
def flaky(context: Any, value: str) -> dict[str, Any]:
    """Fails its first attempt, succeeds on the next."""
    if context.attempt == 1:
        raise ConnectionError("the partner hung up")
    return {"value": value, "attempt": context.attempt, "id": context.task_result.id}


@task()
async def double(n: int) -> int:
    await asyncio.sleep(0)
    return n * 2


@task()
def count_jobs() -> int:
    """Queries through Django's own connection, in the worker."""
    with connection.cursor() as cursor:
        cursor.execute("select count(*) from errands_jobs")
        return int(cursor.fetchone()[0])


@task()
def wait_for_file(path: str) -> str:
    """Runs until the file at `path` exists."""
    while not Path(path).exists():
        time.sleep(0.02)
    return "done"
