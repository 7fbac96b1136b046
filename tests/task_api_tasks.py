"""Tasks for the daemon tests of the task API: coroutines, Fail, Retry, enqueue from a task."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from daemon_tasks import _record_start, record  # type: ignore[import-not-found]

import errands


@errands.task
async def nap(seconds: float) -> dict[str, Any]:
    """Sleep on the event loop; the result says when it ran, and where."""
    started = time.time()
    await asyncio.sleep(seconds)
    return {"started": started, "ended": time.time(), "pid": os.getpid()}


@errands.task(timeout=0.5)
async def nap_past_timeout(seconds: float, witness: str) -> None:
    """Outlive the timeout; write to `witness` whether the coroutine was cancelled."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        Path(witness).write_text(f"cancelled in {os.getpid()}")
        raise
    Path(witness).write_text("not cancelled")


@errands.task
async def hold_async(seconds: float) -> dict[str, Any]:
    """Sleep on the first attempt (recorded), return at once on later ones."""
    await asyncio.to_thread(_record_start)  # current_job() travels with the thread's context
    if errands.current_job().attempt == 1:
        await asyncio.sleep(seconds)
    return {"pid": os.getpid()}


@errands.task
def fail_for_good(reason: str) -> None:
    _record_start()
    raise errands.Fail(reason)


@errands.task(no_retry_on=(KeyError,))
def missing_key() -> None:
    _record_start()
    raise KeyError("no such customer")


@errands.task
def rate_limited_once(retry_in: float) -> str:
    _record_start()
    if errands.current_job().attempt == 1:
        raise errands.Retry(in_seconds=retry_in, reason="partner rate limit")
    return "sent"


@errands.task(queue="mail", max_attempts=2)
def on_the_mail_queue() -> str:
    return "sent"


@errands.task
def enqueue_a_follow_up(tag: str) -> int:
    """Enqueue from inside a task: the job goes to the worker's own database."""
    return record.enqueue(tag=tag).id
