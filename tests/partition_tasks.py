"""Tasks for the partition tests. Each attempt leaves a trace in a file of its own, not in the
database, which a partition cuts off too: the file's last line says when it last ran."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import errands

TICK_SECONDS = 0.05


def _trace(directory: str, line: str) -> None:
    job = errands.current_job()
    with (Path(directory) / f"{job.id}-{job.attempt}-{os.getpid()}").open("a") as trace:
        trace.write(f"{line} {time.monotonic()}\n")


@errands.task
def ticking(seconds: float, traces: str) -> int:
    """Tick for `seconds` on the first attempt; return at once on later ones."""
    if errands.current_job().attempt == 1:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            _trace(traces, "tick")
            time.sleep(TICK_SECONDS)
    _trace(traces, "returned")
    return errands.current_job().attempt


@errands.task
async def ticking_async(seconds: float, traces: str) -> int:
    """The coroutine twin of `ticking`; records a cancellation before it takes it."""
    try:
        if errands.current_job().attempt == 1:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                _trace(traces, "tick")
                await asyncio.sleep(TICK_SECONDS)
    except asyncio.CancelledError:
        _trace(traces, "cancelled")
        raise
    _trace(traces, "returned")
    return errands.current_job().attempt
