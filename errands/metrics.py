"""Prometheus metrics (docs/reference/metrics.md), aggregated across the daemon's processes.

Under `errands run` the supervisor owns a multiprocess directory: it wipes it
at start, every child writes its counters there, the supervisor marks exited
children dead, and the HTTP child serves the sum once. The metric objects are
built on first use, after that choice is made, because prometheus-client
fixes a metric's storage when the metric is created.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Generic, TypeVar

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

from errands.limits import DEFAULT_QUEUE
from errands.queue.jobs import Job, JobState
from errands.queue.schedules import ScheduleStatus
from errands.registry import registered, registered_tasks

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, float("inf"))
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300, float("inf"))

# Queue and task names come from clients: a label value for each one they invent would
# grow every process's memory and /metrics without end. Counters label registered tasks
# (on their queue) by name, and the first MAX_LABELLED_PAIRS other (queue, task) pairs a
# process meets; histograms, a dozen series a pair and observed only by workers, which know
# every task that can run, label registered tasks alone. The rest count under OTHER, which
# no task or queue can be named.
MAX_LABELLED_PAIRS = 50
MAX_QUEUE_GAUGES = 50
OTHER = "(other)"

M = TypeVar("M", Counter, Histogram)


class JobLabels:
    """The bounded (queue, task) label values of one process."""

    def __init__(self, limit: int = MAX_LABELLED_PAIRS) -> None:
        self._limit = limit
        self._labelled: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, queue: str, task: str) -> tuple[str, str]:
        pair = (queue, task)
        if _registered_pair(queue, task):
            return pair
        with self._lock:
            if pair in self._labelled:
                return pair
            if len(self._labelled) < self._limit:
                self._labelled.add(pair)
                return pair
        return folded(queue, task)


def folded(queue: str, task: str) -> tuple[str, str]:
    """The labels of a pair past the cap: only names the configuration knows survive."""
    if _registered_pair(queue, task):
        return queue, task
    return (queue if _known_queue(queue) else OTHER, task if registered(task) else OTHER)


def _known_queue(queue: str) -> bool:
    return queue == DEFAULT_QUEUE or any(t.queue == queue for t in registered_tasks().values())


def _registered_pair(queue: str, task: str) -> bool:
    spec = registered(task)
    return spec is not None and spec.queue == queue


class JobMetric(Generic[M]):
    """A metric labelled by queue and task, through bounded label values."""

    def __init__(self, metric: M, labels: Callable[[str, str], tuple[str, str]]) -> None:
        self._metric: M = metric
        self._labels = labels
        # Pairs labelled by their own names keep them: their series, found without the
        # label checks (a worker moves three series per job). As bounded as the pairs.
        self._named: dict[tuple[str, str], M] = {}

    def labels(self, queue: str, task: str) -> M:
        pair = (queue, task)
        child = self._named.get(pair)
        if child is None:
            values = self._labels(queue, task)
            child = self._metric.labels(*values)
            if values == pair:
                self._named[pair] = child
        return child


class Metrics:
    def __init__(self) -> None:
        labels = JobLabels()
        self.jobs_enqueued = JobMetric(
            Counter(
                "errands_jobs_enqueued_total", "Jobs created by submissions", ["queue", "task"]
            ),
            labels,
        )
        self.jobs_completed = JobMetric(
            Counter("errands_jobs_completed_total", "Jobs completed", ["queue", "task"]), labels
        )
        self.jobs_failed = JobMetric(
            Counter(
                "errands_jobs_failed_total", "Failed attempts (retried or not)", ["queue", "task"]
            ),
            labels,
        )
        self.jobs_dead = JobMetric(
            Counter(
                "errands_jobs_dead_total", "Jobs that spent their attempt budget", ["queue", "task"]
            ),
            labels,
        )
        self.jobs_recovered = Counter(
            "errands_jobs_recovered_total",
            "Jobs taken back from lost workers",
            ["reason"],  # worker_exited | lease_expired
        )
        # Running jobs (issue 24): cancels of running jobs, as their workers see them.
        self.cancels_requested = JobMetric(
            Counter(
                "errands_cancels_requested_total",
                "Cancel requests a worker heard for an attempt it was running",
                ["queue", "task"],
            ),
            labels,
        )
        self.cancels_honoured = JobMetric(
            Counter(
                "errands_cancels_honoured_total",
                "Attempts that ended after a cancel request, their jobs recorded cancelled",
                ["queue", "task"],
            ),
            labels,
        )
        self.leases_lost = Counter(
            "errands_leases_lost_total", "Attempts whose lease was lost; results not written"
        )
        self.job_duration = JobMetric(
            Histogram(
                "errands_job_duration_seconds",
                "Task run time",
                ["queue", "task"],
                buckets=DURATION_BUCKETS,
            ),
            folded,
        )
        self.job_wait = JobMetric(
            Histogram(
                "errands_job_wait_seconds",
                "Time from due (run_at) to start",
                ["queue", "task"],
                buckets=WAIT_BUCKETS,
            ),
            folded,
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


def queue_gauges(
    counts: list[tuple[str, str, int]], oldest: dict[str, float], throttled: dict[str, int]
) -> list[Metric]:
    """Jobs per queue and state, the oldest due job's age, and the due jobs a full limit holds
    back, for a bounded set of queues.

    The `default` queue, registered tasks' queues, and the busiest others up to
    MAX_QUEUE_GAUGES queues are shown by name; the rest are summed under OTHER
    (its age: the oldest of theirs).
    """
    label = _queue_label(counts, oldest)
    per_state: dict[tuple[str, str], int] = {}
    for queue, state, count in counts:
        key = (label(queue), state)
        per_state[key] = per_state.get(key, 0) + count
    ages: dict[str, float] = {}
    for queue, seconds in oldest.items():
        ages[label(queue)] = max(seconds, ages.get(label(queue), seconds))
    jobs = GaugeMetricFamily(
        "errands_queue_jobs", "Jobs per queue and state", labels=["queue", "state"]
    )
    for (queue, state), count in per_state.items():
        jobs.add_metric([queue, state], count)
    age = GaugeMetricFamily(
        "errands_queue_oldest_pending_seconds",
        "Age of the oldest due job waiting, per queue",
        labels=["queue"],
    )
    for queue, seconds in ages.items():
        age.add_metric([queue], seconds)
    held: dict[str, int] = {}
    for queue, count in throttled.items():
        held[label(queue)] = held.get(label(queue), 0) + count
    throttled_gauge = GaugeMetricFamily(
        "errands_jobs_throttled",
        "Due jobs a full concurrency or rate limit holds back, per queue",
        labels=["queue"],
    )
    for queue, count in held.items():
        throttled_gauge.add_metric([queue], count)
    return [jobs, age, throttled_gauge]


def schedule_gauge(schedules: list[ScheduleStatus]) -> Metric:
    """When each schedule last enqueued a job: an alert can catch one that stopped."""
    gauge = GaugeMetricFamily(
        "errands_schedule_last_enqueued_timestamp_seconds",
        "When the periodic schedule last enqueued a job (Unix time)",
        labels=["schedule"],
    )
    for schedule in schedules:
        if schedule.last_enqueued_at is not None:
            gauge.add_metric([schedule.name], schedule.last_enqueued_at.timestamp())
    return gauge


def _queue_label(
    counts: list[tuple[str, str, int]], oldest: dict[str, float]
) -> Callable[[str], str]:
    totals: dict[str, int] = dict.fromkeys(oldest, 0)
    for queue, _, count in counts:
        totals[queue] = totals.get(queue, 0) + count
    by_size = sorted(
        totals, key=lambda queue: (folded(queue, "")[0] == OTHER, -totals[queue], queue)
    )
    shown = set(by_size[:MAX_QUEUE_GAUGES])
    return lambda queue: queue if queue in shown else OTHER


def record_failure(job: Job, state: JobState) -> None:
    """Count a failed attempt, and a dead job when it spent the budget."""
    metrics().jobs_failed.labels(job.queue, job.task).inc()
    if state is JobState.DEAD:
        metrics().jobs_dead.labels(job.queue, job.task).inc()
