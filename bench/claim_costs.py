"""What one claim costs PostgreSQL, with and without a limit, or under two versions of the SQL.

Two owners alternate claims of K jobs on one connection, each completing the K it claimed
before (a drain's steady state without the workers): the bench's no-op jobs, and its
jobs under a limit of 50, which a claim of 25 keeps full. Before each series the completed
jobs are deleted and the table vacuumed, so that series compare. Prints, per series of
200 claims, the claim's execution time (pg_stat_statements) and the backend's CPU
(/proc/PID/schedstat: the server must run on this machine).

    .venv/bin/python bench/claim_costs.py URL [K] [SERIES]
        the claim without a limit and under the limit of 50, alternated
    .venv/bin/python bench/claim_costs.py URL K SERIES A.sql B.sql
        under the limit only, alternating the definitions in A.sql and B.sql (each run on
        the database before its series): the paired median of B's CPU minus A's

URL is a server with pg_stat_statements loaded (shared_preload_libraries); the script
measures on a new database of its own, dropped afterwards.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

import psycopg

from errands.harness import bench_tasks
from errands.harness.bench import LIMITED, NOOP, fresh_database
from errands.queue import lease
from errands.queue.jobs import Job
from errands.queue.requests import JobRequest
from errands.queue.submit import enqueue_many
from errands.queue.throttles import declare_task_limits

CLAIMS = 200  # a series
QUEUES = {"plain": NOOP, "limited": LIMITED}
CLAIM_TIME = """
select sum(total_exec_time) / sum(calls) * 1000 from pg_stat_statements
where toplevel and query like 'with completed as (%'
"""


def series(conn: psycopg.Connection[Any], queue: str, k: int) -> tuple[float, float]:
    """A series of claims from `queue`: execution and backend CPU per claim, in µs."""
    conn.execute("delete from errands_jobs where state = 'completed'")
    conn.execute("vacuum errands_jobs")
    held: dict[str, list[Job]] = {"a": [], "b": []}

    def claim(owner: str, wanted: int = k) -> None:
        done = [lease.Completion(job.id, job.attempts, "null") for job in held[owner]]
        held[owner] = lease.complete_and_claim(conn, owner, done, [queue], wanted, 30).jobs

    for n in range(6):  # prepared, warm
        claim("ab"[n % 2])
    conn.execute("select pg_stat_statements_reset()")
    cpu_before = _backend_cpu(conn)
    for n in range(CLAIMS):
        claim("ab"[n % 2])
    cpu = (_backend_cpu(conn) - cpu_before) / CLAIMS / 1000
    row = conn.execute(CLAIM_TIME).fetchone()
    claim("a", 0)  # nothing left held for the next series
    claim("b", 0)
    return float(row[0]) if row else 0.0, cpu


def _backend_cpu(conn: psycopg.Connection[Any]) -> int:
    with open(f"/proc/{conn.info.backend_pid}/schedstat") as stat:
        return int(stat.read().split()[0])  # nanoseconds on a CPU


def main(url: str, k: int, rounds: int, definitions: list[str]) -> None:
    with fresh_database(url) as db, psycopg.connect(db, autocommit=True) as conn:
        conn.execute("create extension if not exists pg_stat_statements")
        conn.execute("set plan_cache_mode = force_generic_plan")  # as a worker does
        tasks = (bench_tasks.noop, bench_tasks.limited)
        declare_task_limits(conn, {task.name: task.limits for task in tasks})
        for queue, task in QUEUES.items():
            # Enough for every series to draw from one queue (two a round under A/B).
            for _ in range(2 * rounds * (CLAIMS + 6) * k // 1000 + 1):
                with conn.transaction():
                    enqueue_many(conn, [JobRequest(task=task, queue=queue)] * 1000)
        results: dict[str, list[tuple[float, float]]] = {}
        for n in range(rounds):
            if definitions:
                order = list(zip("AB", definitions, strict=True))
                for name, path in order if n % 2 == 0 else order[::-1]:
                    with open(path) as sql:
                        conn.execute(sql.read().encode())
                    results.setdefault(name, []).append(series(conn, "limited", k))
            else:
                for queue in QUEUES if n % 2 == 0 else reversed(QUEUES):
                    results.setdefault(queue, []).append(series(conn, queue, k))
        for name, figures in results.items():
            print(
                f"{name}: execution {statistics.median(f[0] for f in figures):.0f} µs a claim, "
                f"backend CPU {statistics.median(f[1] for f in figures):.0f} µs "
                f"(series: {', '.join(f'{f[1]:.0f}' for f in figures)})"
            )
        if definitions:
            paired = [b[1] - a[1] for a, b in zip(results["A"], results["B"], strict=True)]
            print(f"B - A, backend CPU a claim, paired median: {statistics.median(paired):.0f} µs")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(
        arguments[0],
        int(arguments[1]) if len(arguments) > 1 else 25,
        int(arguments[2]) if len(arguments) > 2 else 6,
        arguments[3:5],
    )
