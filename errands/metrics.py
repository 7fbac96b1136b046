"""Prometheus metrics (README: Metrics), aggregated across the daemon's processes.

Under `errands run` the supervisor owns a multiprocess directory: it wipes it
at start, every child writes its counters there, the supervisor marks exited
children dead, and the HTTP child serves the sum once. The metric objects are
built on first use, after that choice is made, because prometheus-client
fixes a metric's storage when the metric is created.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from errands.queue import Job, JobState

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, float("inf"))
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300, float("inf"))


class Metrics:
    def __init__(self) -> None:
        self.jobs_enqueued = Counter(
            "errands_jobs_enqueued_total", "Jobs created by submissions", ["queue", "task"]
        )
        self.jobs_completed = Counter(
            "errands_jobs_completed_total", "Jobs completed", ["queue", "task"]
        )
        self.jobs_failed = Counter(
            "errands_jobs_failed_total", "Failed attempts (retried or not)", ["queue", "task"]
        )
        self.jobs_dead = Counter(
            "errands_jobs_dead_total", "Jobs that spent their attempt budget", ["queue", "task"]
        )
        self.jobs_recovered = Counter(
            "errands_jobs_recovered_total",
            "Jobs taken back from lost workers",
            ["reason"],  # worker_exited | lease_expired
        )
        self.leases_lost = Counter(
            "errands_leases_lost_total", "Attempts whose lease was lost; results not written"
        )
        self.job_duration = Histogram(
            "errands_job_duration_seconds",
            "Task run time",
            ["queue", "task"],
            buckets=DURATION_BUCKETS,
        )
        self.job_wait = Histogram(
            "errands_job_wait_seconds",
            "Time from due (run_at) to start",
            ["queue", "task"],
            buckets=WAIT_BUCKETS,
        )
        self.workers_alive = Gauge(
            "errands_workers_alive", "Worker processes running", multiprocess_mode="livesum"
        )
        self.worker_restarts = Counter(
            "errands_worker_restarts_total", "Children restarted by the supervisor"
        )


@cache
def metrics() -> Metrics:
    return Metrics()


def enable_multiprocess(directory: Path) -> None:
    """Aggregate every process's metrics through `directory` (emptied first).

    Must run before `metrics()` is first called in this process and before any
    child is forked.
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def process_exited(pid: int) -> None:
    if MULTIPROC_ENV in os.environ:
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


def exposition(database_gauges: Callable[[], list[Metric]]) -> bytes:
    """The text format: this process's (or every process's) metrics and the database gauges."""
    metrics()  # every metric exists from the first scrape, at zero
    if MULTIPROC_ENV in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    return generate_latest(_WithDatabase(registry, database_gauges))


class _WithDatabase:
    """A registry view that adds gauges read from the database at scrape time."""

    def __init__(self, registry: CollectorRegistry, database_gauges: Callable[[], list[Metric]]):
        self._registry = registry
        self._database_gauges = database_gauges

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._database_gauges()


def queue_gauges(counts: list[tuple[str, str, int]], oldest: dict[str, float]) -> list[Metric]:
    jobs = GaugeMetricFamily(
        "errands_queue_jobs", "Jobs per queue and state", labels=["queue", "state"]
    )
    for queue, state, count in counts:
        jobs.add_metric([queue, state], count)
    age = GaugeMetricFamily(
        "errands_queue_oldest_pending_seconds",
        "Age of the oldest due job waiting, per queue",
        labels=["queue"],
    )
    for queue, seconds in oldest.items():
        age.add_metric([queue], seconds)
    return [jobs, age]


def record_failure(job: Job, state: JobState) -> None:
    """Count a failed attempt, and a dead job when it spent the budget."""
    metrics().jobs_failed.labels(job.queue, job.task).inc()
    if state is JobState.DEAD:
        metrics().jobs_dead.labels(job.queue, job.task).inc()
