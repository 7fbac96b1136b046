"""The cost of one enqueue path per job: rate, client CPU and PostgreSQL CPU.

What measured the changes of issue 30 (CHANGELOG). CPU per job moves far less than
the rate on a shared machine; compare two versions of the code in alternating runs,
each from a directory outside the checkouts (so that PYTHONPATH, not the current
directory, decides which errands is imported):

    cd /tmp && PYTHONPATH=/path/to/other/checkout /path/to/.venv/bin/python \\
        /path/to/bench/ab_enqueue.py URL single 3000

URL is a local PostgreSQL server (its CPU is read from /proc); the script measures on a
new database of its own, dropped afterwards. WHAT is `single` (Client.enqueue), `batch`
(Client.enqueue_many of 1,000 jobs), `batch-limited` (the same, of a task under a
concurrency limit, declared first), `single-floor` (the enqueue statement alone,
psycopg, prepared after 5 runs) or `batch-floor` (COPY into errands_jobs).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

from errands import Client
from errands.harness import bench_tasks
from errands.harness.bench import LIMITED, NOOP, fresh_database
from errands.harness.process import ProcStat, tree_cpu_seconds
from errands.queue.queries import query
from errands.queue.requests import JobRequest
from errands.queue.submit import enqueue_params
from errands.queue.throttles import declare_task_limits


def workload(
    what: str, jobs: int, client: Client, conn: psycopg.Connection[Any]
) -> Callable[[], None]:
    def single() -> None:
        for _ in range(jobs):
            client.enqueue(NOOP)

    def batch(task: str = NOOP) -> None:
        specs = [{"task": task}] * 1000
        for _ in range(jobs // 1000):
            client.enqueue_many(specs)

    def single_floor() -> None:
        params = enqueue_params(JobRequest(task=NOOP, max_attempts=5))
        for _ in range(jobs):
            conn.execute(query("enqueue"), params).fetchone()

    def batch_floor() -> None:
        rows = [(NOOP, "default", "{}", 5, 5)] * 1000
        copy = "copy errands_jobs (task, queue, payload, max_attempts, attempt_budget) from stdin"
        for _ in range(jobs // 1000):
            with conn.transaction(), conn.cursor().copy(copy) as copying:
                for row in rows:
                    copying.write_row(row)

    return {
        "single": single,
        "batch": batch,
        "batch-limited": lambda: batch(LIMITED),
        "single-floor": single_floor,
        "batch-floor": batch_floor,
    }[what]


def main(server_url: str, what: str, jobs: int) -> None:
    with (
        fresh_database(server_url) as url,
        psycopg.connect(url, autocommit=True) as conn,
        Client(url) as client,
    ):
        stat = ProcStat.read(conn.info.backend_pid)
        assert stat is not None, "PostgreSQL must run on this machine"
        if what == "batch-limited":
            declare_task_limits(conn, {LIMITED: bench_tasks.limited.limits})
        client.enqueue(NOOP)
        client.enqueue_many([{"task": NOOP}])
        run = workload(what, jobs, client, conn)
        postgres, own, started = (
            tree_cpu_seconds(stat.ppid),
            time.process_time(),
            time.perf_counter(),
        )
        run()
        seconds = time.perf_counter() - started
        own, postgres = time.process_time() - own, tree_cpu_seconds(stat.ppid) - postgres
    print(
        f"{what}: {jobs / seconds:,.0f} jobs/s, CPU per job: client {own / jobs * 1e6:.1f} us,"
        f" PostgreSQL {postgres / jobs * 1e6:.1f} us"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
