"""Tasks the benchmark runs: nothing at all, and something long enough to be killed."""

from __future__ import annotations

import time

from errands.tasks import current_job, task


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
