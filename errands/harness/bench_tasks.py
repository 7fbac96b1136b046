"""Tasks the benchmark runs: nothing at all, something long enough to be killed, sleepers."""

from __future__ import annotations

import asyncio
import time

from errands.tasks import check_cancelled, current_job, task


@task("bench.noop")
def noop() -> None:
    """No work: what remains is the queue's own cost."""


@task("bench.hold")
def hold(seconds: float) -> None:
    """Run long on the first attempt only, so a recovered job finishes at once."""
    if current_job().attempt == 1:
        time.sleep(seconds)


@task("bench.stamp")
def stamp() -> float:
    """No work; returns when it started (Unix time), for the fairness workload."""
    return time.time()


@task("bench.slow")
def slow(seconds: float) -> list[float]:
    """Sleep `seconds`; returns when it started and ended (Unix time)."""
    started = time.time()
    time.sleep(seconds)
    return [started, time.time()]


@task("bench.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@task("bench.spin")
def spin(seconds: float) -> None:
    """A thread task that stops when asked to: it checks every millisecond."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check_cancelled()
        time.sleep(0.001)


@task("bench.progress")
def progress(seconds: float) -> int:
    """Report progress in a tight loop for `seconds`; returns how many reports it made."""
    job = current_job()
    calls = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        job.set_progress(min(1.0, elapsed / seconds))
        calls += 1
    return calls


@task("bench.nap")
async def nap(seconds: float) -> None:
    """An I/O-bound job as a coroutine: it waits, and holds no thread while it does."""
    await asyncio.sleep(seconds)


@task("bench.limited", concurrency=50)
def limited() -> None:
    """No work, at most 50 at once across the daemon: the cost of a concurrency limit."""


@task("bench.per_key", concurrency=1, concurrency_key="key")
def per_key(key: int) -> None:
    """No work, at most one at once per key: the cost of serving many keys in turn."""
