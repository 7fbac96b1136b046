"""Tasks for the daemon tests of running jobs: complete_in, cancels, progress.

Each records its start in test_executions (daemon_tasks._record_start); the
ledger is the application's own table, written in the transaction complete_in
completes the job in.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psycopg
from daemon_tasks import _record_start  # type: ignore[import-not-found]

import errands


def _url() -> str:
    return os.environ["ERRANDS_DATABASE_URL"]


def _charge(amount: int) -> None:
    """The application's write and the job's completion, in one transaction."""
    job = errands.current_job()
    with psycopg.connect(_url()) as app:  # commits on leaving, rolls back on an error
        app.execute(
            "insert into ledger (job_id, attempt, amount) values (%s, %s, %s)",
            (job.id, job.attempt, amount),
        )
        job.complete_in(app, {"charged": amount})


@errands.task
def charge(amount: int) -> str:
    _record_start()
    _charge(amount)
    return "returned"


@errands.task
def charge_then_wait(amount: int, seconds: float) -> None:
    """Commit the charge, then keep running: a kill now must not run the job again."""
    _record_start()
    _charge(amount)
    time.sleep(seconds)


@errands.task
def charge_after(seconds: float, witness: str) -> None:
    """On the first attempt, wait first (stopped or robbed of the lease meanwhile), then
    charge; `witness` says whether complete_in raised LeaseLost."""
    _record_start()
    if errands.current_job().attempt == 1:
        time.sleep(seconds)
    try:
        _charge(1)
    except errands.LeaseLost:
        Path(witness).write_text("LeaseLost")
        raise


@errands.task
def charge_when_told(go: str, witness: str) -> None:
    """On the first attempt, wait until the file `go` exists, then charge."""
    _record_start()
    if errands.current_job().attempt == 1:
        while not Path(go).exists():
            time.sleep(0.01)
    try:
        _charge(1)
    except errands.LeaseLost:
        Path(witness).write_text("LeaseLost")
        raise


@errands.task
def spin(seconds: float) -> str:
    """A thread task that stops when asked to: errands.check_cancelled() between steps."""
    _record_start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        errands.check_cancelled()
        time.sleep(0.005)
    return "spun"


@errands.task
def ignore_cancel(seconds: float) -> str:
    """A thread task that never looks: it runs to its end."""
    _record_start()
    time.sleep(seconds)
    return f"ignored: {errands.current_job().cancel_requested}"


@errands.task
async def nap(seconds: float, witness: str = "") -> str:
    """A coroutine: a cancel request raises CancelledError in it."""
    await asyncio.to_thread(_record_start)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if witness:
            Path(witness).write_text("CancelledError")
        raise
    return "napped"


@errands.task
def brief(seconds: float) -> str:
    """Returns after `seconds`: the race of a cancel against the job's return."""
    _record_start()
    time.sleep(seconds)
    return "done"


@errands.task
def report_progress(seconds: float) -> dict[str, Any]:
    """Report progress in a tight loop for `seconds`; returns how many reports it made."""
    _record_start()
    job = errands.current_job()
    calls = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        job.set_progress({"done": calls, "total": 10**9, "stage": "counting"})
        job.set_progress(min(1.0, elapsed / seconds))
        calls += 2
    job.set_progress(1.0)
    return {"calls": calls + 1}
