"""The `ui` workload of `errands bench`: every dashboard page timed over a large jobs table.

The jobs are loaded with COPY in the mix a long-running deployment keeps
(mostly completed, some dead with tracebacks, a few cancelled, and a backlog
of pending and failed jobs, across several queues), with the counters the
triggers would have kept for them; then each page is requested several times
and its median time kept.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

QUEUES = ("default", "mail", "reports", "webhooks", "billing")
# A backlog is the newest jobs: the last 5 % wait (pending, or failed and due for
# a retry); the older jobs finished, and their dead and cancelled ones lie
# scattered among the completed, as jobs die and are cancelled at any time.
BACKLOG = 0.05
WAITING = (("pending", 0.6), ("failed", 0.4))
FINISHED = (("completed", 0.947), ("dead", 0.042), ("cancelled", 0.011))
REQUESTS = 9
TRACEBACK = (
    'Traceback (most recent call last):\n  File "tasks.py", line 12, in send\nTimeoutError\n'
)
COLUMNS = (
    "queue, task, payload, state, attempts, max_attempts, attempt_budget, idempotency_key,"
    " last_error, errors, run_at, created_at, started_at, finished_at"
)


def load(url: str, jobs: int, report: Callable[[str], None]) -> None:
    """COPY `jobs` jobs into errands_jobs, with the finished counts and throughput they imply."""
    rng = random.Random(15)
    now = datetime.now(UTC)
    started = time.perf_counter()
    waiting, finished = (
        [state for state, share in mix for _ in range(round(share * 1000))]
        for mix in (WAITING, FINISHED)
    )
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"copy errands_jobs ({COLUMNS}) from stdin") as copy:
            for n in range(jobs):
                state = rng.choice(waiting if n >= jobs * (1 - BACKLOG) else finished)
                copy.write_row(_row(n, jobs, state, rng, now))
        report(f"  loaded {jobs:,} jobs with COPY in {time.perf_counter() - started:.1f} s")
        # What the triggers keep for jobs that reach these states by UPDATE (COPY bypasses them).
        conn.execute(
            "insert into errands_finished_counts (queue, state, shard, jobs)"
            " select queue, state, 0, count(*) from errands_jobs"
            " where state in ('completed', 'dead', 'cancelled') group by queue, state"
        )
        # An hour of throughput from 16 busy backends on every queue: the most rows the chart reads.
        conn.execute(
            "insert into errands_throughput (minute, queue, state, shard, jobs)"
            " select date_trunc('minute', now()) - make_interval(mins => m), q, s, shard, 100"
            " from generate_series(0, 59) m, unnest(%s::text[]) q,"
            " unnest('{completed,failed,dead}'::errands_job_state[]) s,"
            " generate_series(0, 15) shard",
            (list(QUEUES),),
        )
        conn.execute("vacuum analyze errands_jobs")


def _row(n: int, jobs: int, state: str, rng: random.Random, now: datetime) -> tuple[Any, ...]:
    # Ids grow with age: job n was created (jobs - n) seconds ago, about 11 days for a million.
    created = now - timedelta(seconds=jobs - n)
    finished = created + timedelta(seconds=rng.uniform(0.01, 2)) if state != "pending" else None
    failed = state in ("dead", "failed")
    attempts = 5 if state == "dead" else (2 if state == "failed" else int(state != "pending"))
    if state == "cancelled":
        attempts, finished = 0, created + timedelta(minutes=1)
    errors = (
        [
            {
                "attempt": a,
                "at": created.isoformat(),
                "error": "TimeoutError",
                "traceback": TRACEBACK,
            }
            for a in range(1, attempts + 1)
        ]
        if failed
        else []
    )
    return (
        QUEUES[n % len(QUEUES)],
        "send_email" if n % 3 else "generate_report",
        json.dumps({"to": f"user{n}@example.com", "n": n}),
        state,
        attempts,
        5,
        5,
        f"order-{n}" if n % 10 == 0 else None,
        "TimeoutError" if failed else None,
        json.dumps(errors),
        created,
        created,
        created if attempts else None,
        finished if state in ("completed", "dead", "cancelled") else None,
    )


def measure(base: str, jobs: int) -> dict[str, float]:
    """Median milliseconds of each page, REQUESTS requests each after one warm-up."""
    with httpx.Client(base_url=base, timeout=60) as http:
        first = http.get("/ui/jobs")
        csrf = re.search(r'name="csrf" value="([^"]+)"', first.text)
        assert csrf, "the jobs page carries no CSRF token"
        deep = jobs // 2
        dead = _dead_id(http)
        pages: dict[str, Callable[[], httpx.Response]] = {
            "overview": lambda: http.get("/ui"),
            "overview live part": lambda: http.get("/ui/live"),
            "jobs, newest": lambda: http.get("/ui/jobs"),
            "jobs, page deep in history": lambda: http.get(f"/ui/jobs?after={deep}"),
            "jobs, state=dead queue=mail": lambda: http.get("/ui/jobs?state=dead&queue=mail"),
            "jobs, task=generate_report": lambda: http.get("/ui/jobs?task=generate_report"),
            "job (dead, 5 tracebacks)": lambda: http.get(f"/ui/jobs/{dead}"),
            "find by idempotency key": lambda: http.get(f"/ui/find?q=order-{deep // 10 * 10}"),
            "bulk retry: count dead in mail": lambda: http.post(
                "/ui/bulk", data={"csrf": csrf.group(1), "action": "retry", "queue": "mail"}
            ),
            "schedules": lambda: http.get("/ui/schedules"),
        }
        return {name: _median_ms(request) for name, request in pages.items()}


def _dead_id(http: httpx.Client) -> int:
    found = re.search(r'<tr data-id="(\d+)"', http.get("/ui/jobs?state=dead").text)
    assert found, "no dead job to show"
    return int(found.group(1))


def _median_ms(request: Callable[[], httpx.Response]) -> float:
    times = []
    for n in range(REQUESTS + 1):  # the first warms up: connection, plans, caches
        started = time.perf_counter()
        response = request()
        if n:
            times.append((time.perf_counter() - started) * 1000)
        if response.status_code >= 400:
            raise RuntimeError(f"{response.request.url} answered {response.status_code}")
    return statistics.median(times)
