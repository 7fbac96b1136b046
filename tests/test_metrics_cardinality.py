"""Queue and task names a client invents never grow /metrics without bound."""

from __future__ import annotations

import re
from collections import defaultdict

import httpx
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from errands import JobState
from errands.harness.process import free_port
from errands.harness.waiting import wait_for
from errands.metrics import (
    MAX_LABELLED_PAIRS,
    MAX_QUEUE_GAUGES,
    OTHER,
    JobLabels,
    JobMetric,
    queue_gauges,
)
from errands.queue.requests import QUEUE_NAME, TASK_NAME
from errands.registry import registered
from errands.tasks import task
from tests.test_daemon import StartDaemon


@task("metrics_registered_task", queue="metrics-queue")
def metrics_registered_task() -> None:
    """A task registered in this process, on a queue of its own."""


names = st.from_regex(TASK_NAME, fullmatch=True)
queues = st.from_regex(QUEUE_NAME, fullmatch=True)


@given(st.lists(st.tuples(queues, names), max_size=300))
def test_invented_pairs_get_at_most_the_cap_of_label_values(pairs: list[tuple[str, str]]) -> None:
    labels = JobLabels(limit=10)
    given_out = {labels(queue, name) for queue, name in pairs}
    invented = [p for p in given_out if OTHER not in p and registered(p[1]) is None]
    assert len(invented) <= 10
    folded = {p for p in given_out if OTHER in p}
    # Folded pairs keep only names the configuration knows: a known queue, a registered task.
    assert all(q in ("default", "metrics-queue", OTHER) for q, _ in folded)
    assert all(t == OTHER or registered(t) is not None for _, t in folded)


def test_registered_tasks_keep_their_labels_past_the_cap() -> None:
    labels = JobLabels(limit=2)
    for n in range(5):
        labels("default", f"invented_{n}")
    assert labels("metrics-queue", "metrics_registered_task") == (
        "metrics-queue",
        "metrics_registered_task",
    )
    assert labels("default", "invented_0") == ("default", "invented_0")  # labelled before the cap
    assert labels("default", "invented_4") == ("default", OTHER)
    assert labels("made-up", "invented_4") == (OTHER, OTHER)


def test_a_folded_pair_is_labelled_by_name_once_its_task_is_registered() -> None:
    counter = Counter("late", "a test counter", ["queue", "task"], registry=CollectorRegistry())
    metric = JobMetric(counter, JobLabels(limit=0))
    metric.labels("late-queue", "metrics_late_task").inc()

    def late() -> None:
        """Registered only after its first job was counted."""

    task("metrics_late_task", queue="late-queue")(late)
    metric.labels("late-queue", "metrics_late_task").inc(2)
    counted = {
        (s.labels["queue"], s.labels["task"]): s.value
        for s in next(iter(counter.collect())).samples
        if s.name == "late_total"
    }
    assert counted == {(OTHER, OTHER): 1, ("late-queue", "metrics_late_task"): 2}


def test_queue_gauges_fold_the_smallest_invented_queues_and_keep_the_totals() -> None:
    counts = [(f"q{n}", "pending", n + 1) for n in range(200)] + [("default", "pending", 1)]
    oldest = {f"q{n}": float(n) for n in range(200)}
    throttled = {f"q{n}": 1 for n in range(200)}
    jobs, age, held = queue_gauges(counts, oldest, throttled)
    shown = {s.labels["queue"]: s.value for s in jobs.samples}
    assert len(shown) == MAX_QUEUE_GAUGES + 1
    assert "default" in shown and "q199" in shown and "q0" not in shown
    assert sum(shown.values()) == sum(n for _, _, n in counts)
    assert {s.labels["queue"]: s.value for s in age.samples}[OTHER] == 150.0
    held_shown = {s.labels["queue"]: s.value for s in held.samples}
    assert set(held_shown) <= set(shown) and sum(held_shown.values()) == 200


def _series(text: str) -> dict[str, set[str]]:
    """Per metric name, its distinct label sets."""
    found: dict[str, set[str]] = defaultdict(set)
    for line in text.splitlines():
        match = re.match(r"^(errands_\w+?)(?:_bucket|_count|_sum)?(\{.*?\})? ", line)
        if match:
            labels = re.sub(r',?le="[^"]*"', "", match.group(2) or "")
            found[match.group(1)].add(labels)
    return found


def test_seven_thousand_invented_tasks_leave_metrics_small(start_daemon: StartDaemon) -> None:
    port = free_port()
    daemon = start_daemon("--workers", "1", "--port", str(port))
    daemon.wait_for_workers(1)
    worked = 300  # on the default queue: claimed, and dead at once (the task is unknown)
    jobs = [
        {
            "task": f"invented_task_{n}",
            "queue": "default" if n < worked else f"invented-queue-{n}",
            "max_attempts": 1,
        }
        for n in range(7000)
    ]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        wait_for(lambda: http.get("/ready").status_code == 200, what="the API")
        for start in range(0, len(jobs), 1000):
            response = http.post("/jobs/batch", json={"jobs": jobs[start : start + 1000]})
            assert response.status_code == 201
        wait_for(
            lambda: (
                daemon.query("select count(*) from errands_jobs where state = 'dead'")
                == [(worked,)]
            ),
            timeout=120,
            what="the invented jobs of the default queue to die",
        )
        text = http.get("/metrics").text
    series = _series(text)
    for name in ("errands_jobs_enqueued_total", "errands_jobs_failed_total"):
        # The cap, plus the folded pairs: (default, other) and (other, other).
        assert 10 < len(series[name]) <= MAX_LABELLED_PAIRS + 2, name
    assert len(series["errands_queue_jobs"]) <= (MAX_QUEUE_GAUGES + 1) * len(JobState)
    enqueued = re.findall(r"^errands_jobs_enqueued_total\{.*\} (\S+)$", text, re.M)
    assert sum(float(v) for v in enqueued) == 7000  # folded, never dropped
    assert len(text) < 100_000  # 670 KB before the labels were bounded
    assert daemon.stop() == 0
