"""`errands bench`: throughput, latency, recovery and memory, each beside pgbench's figure.

Every run creates a fresh database on the server, measures pgbench there
first, then each workload, and drops the database. Throughputs are divided by
the matching pgbench figure of the same run, so results from different
machines compare.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

from errands.client import Client
from errands.database import open_connection
from errands.errors import ConfigurationError
from errands.harness import bench_tasks, bench_ui, pgbench, server
from errands.harness.pgbouncer import PgBouncer
from errands.harness.process import (
    DaemonProcess,
    ProcStat,
    free_port,
    rss_megabytes,
    tree_cpu_seconds,
)
from errands.harness.waiting import answers, wait_for, wait_until_drained
from errands.queue import control as queue_control
from errands.queue.lease import Completion, claim, complete
from errands.queue.presence import live_workers
from errands.queue.queries import query
from errands.queue.requests import JobRequest
from errands.queue.submit import enqueue_params
from errands.queue.throttles import declare_task_limits
from errands.schema.migrator import migrate

NOOP = "bench.noop"
JSON = {"Content-Type": "application/json"}
HOLD = "bench.hold"
STAMP = "bench.stamp"
SLOW = "bench.slow"
SLOW_JOBS, SLOW_SECONDS = 20, 2.0
BULK_QUEUE = "bulk"  # the backlog another worker drains while latency is measured
SLEEP = "bench.sleep"
NAP = "bench.nap"
SPIN = "bench.spin"
PROGRESS = "bench.progress"
LIMITED = "bench.limited"  # at most 50 in progress at once
PER_KEY = "bench.per_key"  # at most one in progress per key
PER_KEY_KEYS = 100


@dataclass
class Figure:
    id: str
    workload: str
    value: float
    unit: str
    ratio: float | None = None  # to the matching pgbench figure
    ratio_to: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    baseline_seconds: float
    enqueue_single: int
    enqueue_batch: int
    drain: int
    latency_jobs: int
    supervisor_lease: float  # lease for the supervisor-kill recovery (default settings: 30)
    async_jobs: int  # sleeping coroutine jobs for drain-async
    waits: int  # jobs waited for, one after another, for wait-latency
    ui_jobs: int  # jobs in the table while the dashboard's pages are timed
    scale_drain: int  # jobs of each drain of the scale workload
    idle_seconds: float  # how long the idle fleet's database CPU is measured
    cancels: int  # running jobs cancelled, one at a time, per kind of task and wake-up mode
    progress_seconds: float  # how long a job reports progress in a tight loop
    chain: int  # jobs of the chain drained one after another (workflows)
    fan: int  # children of one parent (fan-out), parents of one child (fan-in)

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        if quick:
            return cls(
                3, 1000, 10_000, 3000, 200, 3.0, 3000, 200, 50_000, 1000, 5.0, 10, 3.0, 1000, 1000
            )
        return cls(
            10,
            5000,
            50_000,
            20_000,
            1000,
            30.0,
            20_000,
            1000,
            1_000_000,
            3000,
            20.0,
            40,
            10.0,
            10_000,
            10_000,
        )


WORKLOADS = (
    "baseline",
    "enqueue-single",
    "enqueue-batch",
    "enqueue-floors",
    "http-single",
    "http-batch",
    "drain",
    "drain-immediate",
    "drain-prefetch",
    "chain",
    "fan",
    "drain-limited",
    "drain-per-key",
    "fairness",
    "fairness-prefetch",
    "latency",
    "latency-during-drain",
    "drain-async",
    "wait-latency",
    "cancel-latency",
    "progress-writes",
    "recovery",
    "recovery-supervisor",
    "ui",
    "scale",
)
# Run only when named (--only scale): many processes, a few minutes, and it needs PgBouncer.
OPT_IN = frozenset({"scale"})
# Figures given as ratios to another workload's, which runs with them whatever --only says.
REFERENCES = {"drain-limited": "drain", "drain-per-key": "drain"}
# The drain and the drains whose figures are ratios to it run in rounds, one after the other,
# and each figure is the median of its rounds: on two cores a drain's rate moves by a tenth
# from one run to the next (autovacuum, the host), which a ratio of two single runs doubles.
ROUNDS = ("drain", "drain-limited", "drain-per-key")
SCALE_WORKERS = (1, 2, 4, 8)
SCALE_SUPERVISORS = (1, 2, 4)
IDLE_SUPERVISORS, IDLE_WORKERS_EACH = 4, 8


def chosen_workloads(only: set[str] | None) -> list[str]:
    """The workloads a run runs, in order: those named (every one but the opt-in ones when
    none is), the baseline, and the workloads their figures are ratios to."""
    named = set(WORKLOADS) - OPT_IN if only is None else set(only)
    named |= {"baseline"} | {REFERENCES[w] for w in named if w in REFERENCES}
    return [w for w in WORKLOADS if w in named]


def medians(rounds: list[list[Figure]]) -> list[Figure]:
    """Each figure of `rounds` once, in the order of the first round: its value the median of
    its rounds' values, its ratio the median of their ratios (each to its own round's
    reference), every round's value and ratio kept in its details."""
    by_id: dict[str, list[Figure]] = {}
    for figure in (f for one_round in rounds for f in one_round):
        by_id.setdefault(figure.id, []).append(figure)
    merged = []
    for runs in by_id.values():
        ratios = [f.ratio for f in runs if f.ratio is not None]
        merged.append(
            dataclasses.replace(
                runs[0],
                value=statistics.median(f.value for f in runs),
                ratio=statistics.median(ratios) if ratios else None,
                details={
                    **runs[0].details,
                    "rounds": [f.value for f in runs],
                    **({"round_ratios": ratios} if ratios else {}),
                },
            )
        )
    return merged


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new database on `server_url`'s server, migrated; its URL, and dropped afterwards
    (the bench's runs and the scripts of bench/ measure each on a database of its own)."""
    name = f"errands_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"create database {name}")
    url = make_conninfo(server_url, dbname=name)
    try:
        with open_connection(url, autocommit=True) as conn:
            migrate(conn)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"drop database {name} with (force)")


def limited_job(n: int) -> dict[str, Any]:
    """Job n of the drain under a limit of 50."""
    return {"task": LIMITED}


def per_key_job(n: int) -> dict[str, Any]:
    """Job n of the per-key drain: keys in turn."""
    return {"task": PER_KEY, "payload": {"key": n % PER_KEY_KEYS}}


class Bench:
    def __init__(
        self,
        server_url: str,
        quick: bool,
        report: Callable[[str], None],
        drain_jobs: int | None = None,
        rounds: int = 1,
    ) -> None:
        self.server_url = server_url
        self.sizes = Sizes.for_run(quick)
        if drain_jobs:
            self.sizes = dataclasses.replace(self.sizes, drain=drain_jobs)
        self.quick = quick
        self.rounds = rounds
        self.report = report
        self.figures: list[Figure] = []
        self.pgbench_tps: dict[str, float] = {}
        self.server: dict[str, Any] = {}
        self.drains: dict[str, float] = {}  # jobs/s of each drain, the limited ones' reference
        self.logs = Path(tempfile.mkdtemp(prefix="errands-bench-"))

    # -- running ---------------------------------------------------------------------------

    def run(self, only: set[str] | None = None) -> list[Figure]:
        with fresh_database(self.server_url) as url:
            self.url = url
            self.server = server.describe(url)
            for line in server.summary(self.server):
                self.report(line)
            chosen = chosen_workloads(only)
            in_rounds = [w for w in chosen if w in ROUNDS]
            for workload in chosen:
                if workload not in in_rounds:
                    self._run(workload)
                elif workload == in_rounds[0]:
                    self._run_in_rounds(in_rounds)
        return self.figures

    def _run(self, workload: str) -> None:
        self.report(f"running {workload} ...")
        getattr(self, workload.replace("-", "_"))()
        self._reset()

    def _run_in_rounds(self, workloads: list[str]) -> None:
        """`workloads` one after the other, `self.rounds` times; their figures the medians."""
        before, rounds = len(self.figures), []
        for n in range(self.rounds):
            if self.rounds > 1:
                self.report(f"round {n + 1} of {self.rounds}")
            start = len(self.figures)
            for workload in workloads:
                self._run(workload)
            rounds.append(self.figures[start:])
        if self.rounds > 1:
            del self.figures[before:]
            self.report(f"medians of {self.rounds} rounds:")
            for figure in medians(rounds):
                self._keep(figure)

    def _reset(self) -> None:
        with open_connection(self.url, autocommit=True) as conn:
            conn.execute(
                "truncate errands_jobs, errands_finished_counts, errands_workers,"
                " errands_throughput, errands_queues, errands_limits, errands_limit_counters"
            )
            conn.execute("vacuum analyze errands_jobs")

    def _add(self, figure: Figure) -> None:
        if figure.ratio_to:
            # To a pgbench figure; or, for the limited drains, to the unlimited drain.
            reference = self.pgbench_tps.get(figure.ratio_to) or self.drains.get(figure.ratio_to)
            figure.ratio = figure.value / reference if reference else None
        self._keep(figure)

    def _keep(self, figure: Figure) -> None:
        self.figures.append(figure)
        ratio = f"  ({figure.ratio:.2f} x {figure.ratio_to})" if figure.ratio is not None else ""
        self.report(f"  {figure.id:<30} {figure.value:>12,.3f} {figure.unit}{ratio}")

    def _daemon(self, *args: str, **env: str) -> DaemonProcess:
        log = self.logs / f"daemon-{len(list(self.logs.iterdir()))}.log"
        environment = {
            **os.environ,
            "ERRANDS_DATABASE_URL": self.url,
            "ERRANDS_LOG_FORMAT": "json",
            **env,
        }
        command = [
            "run",
            "--workers",
            "2",
            "--tasks",
            "errands.harness.bench_tasks",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ]
        return DaemonProcess([*command, *args], environment, log).start()

    # -- workloads -------------------------------------------------------------------------

    def baseline(self) -> None:
        pgbench.initialise(self.url)
        seconds = self.sizes.baseline_seconds
        for key, clients, measure in (
            ("pgbench -N 4 clients", 4, pgbench.tps_simple_update),
            ("INSERT 1 client", 1, pgbench.tps_single_insert),
            ("INSERT 4 clients", 4, pgbench.tps_single_insert),
        ):
            self.pgbench_tps[key] = measure(self.url, clients, seconds)
            self._add(Figure(f"baseline {key}", "pgbench", self.pgbench_tps[key], "tps"))

    def enqueue_single(self) -> None:
        jobs = self.sizes.enqueue_single
        with Client(self.url) as client:
            client.enqueue(NOOP)
            started = time.perf_counter()
            for _ in range(jobs):
                client.enqueue(NOOP)
            rate = jobs / (time.perf_counter() - started)
        self._add(
            Figure(
                "enqueue-single",
                "Client.enqueue, one per transaction",
                rate,
                "jobs/s",
                ratio_to="INSERT 1 client",
            )
        )

    def enqueue_batch(self) -> None:
        jobs, batch = self.sizes.enqueue_batch, 1000
        specs = [{"task": NOOP}] * batch
        with Client(self.url) as client:
            client.enqueue_many(specs[:1])  # the pool is open and the schema checked
            postgres_cpu = self._postgres_cpu()
            own_cpu = time.process_time()
            started = time.perf_counter()
            for _ in range(jobs // batch):
                client.enqueue_many(specs)
            rate = jobs / (time.perf_counter() - started)
            cpu_by = {
                "client": ("the submitting process", time.process_time() - own_cpu),
                "postgres": ("PostgreSQL", postgres_cpu()),
            }
        self._add(
            Figure(
                "enqueue-batch",
                f"enqueue_many, batches of {batch}",
                rate,
                "jobs/s",
                ratio_to="INSERT 1 client",
            )
        )
        self._add_cpu("enqueue-batch", jobs, cpu_by)

    def enqueue_floors(self) -> None:
        """What PostgreSQL and psycopg allow the two enqueue workloads, without errands:
        the one-job statement alone on one connection (no validation, no `Job`), and
        COPY straight into the jobs table (no staging, no ids back)."""
        single, batch = self.sizes.enqueue_single, 1000
        params = enqueue_params(JobRequest(task=NOOP, max_attempts=5))
        copy_jobs = (
            "copy errands_jobs (task, queue, payload, max_attempts, attempt_budget) from stdin"
        )
        rows = [(NOOP, "default", "{}", 5, 5)] * batch
        with psycopg.connect(self.url, autocommit=True) as conn:
            started = time.perf_counter()
            for _ in range(single):
                conn.execute(query("enqueue"), params).fetchone()
            single_rate = single / (time.perf_counter() - started)
            started = time.perf_counter()
            for _ in range(self.sizes.enqueue_batch // batch):
                with conn.transaction(), conn.cursor().copy(copy_jobs) as copy:
                    for row in rows:
                        copy.write_row(row)
            batch_rate = self.sizes.enqueue_batch / (time.perf_counter() - started)
        for figure_id, workload, rate in (
            ("enqueue-single floor", "the enqueue statement alone, psycopg", single_rate),
            ("enqueue-batch floor", "COPY into errands_jobs, 1,000 rows a commit", batch_rate),
        ):
            self._add(Figure(figure_id, workload, rate, "jobs/s", ratio_to="INSERT 1 client"))

    def http_single(self) -> None:
        seconds = self.sizes.baseline_seconds
        with self._api() as base:
            rate = wrk_post(
                f"{base}/jobs", '{"task": "bench.noop"}', connections=16, seconds=seconds
            )
        self._add(
            Figure(
                "http-single",
                "POST /jobs, 16 keep-alive connections (wrk)",
                rate,
                "jobs/s",
                ratio_to="INSERT 4 clients",
            )
        )

    def http_batch(self) -> None:
        jobs, batch = self.sizes.enqueue_batch, 1000
        body = json.dumps({"jobs": [{"task": NOOP}] * batch})
        with self._api() as base, httpx.Client(base_url=base, timeout=60) as http:
            started = time.perf_counter()
            for _ in range(jobs // batch):
                response = http.post("/jobs/batch", content=body, headers=JSON)
                response.raise_for_status()
            rate = jobs / (time.perf_counter() - started)
        self._add(
            Figure(
                "http-batch",
                f"POST /jobs/batch of {batch}, one client",
                rate,
                "jobs/s",
                ratio_to="INSERT 1 client",
            )
        )

    @contextmanager
    def _api(self) -> Iterator[str]:
        port = free_port()
        log = self.logs / f"api-{port}.log"
        env = {**os.environ, "ERRANDS_DATABASE_URL": self.url, "ERRANDS_LOG_FORMAT": "json"}
        api = DaemonProcess(["api", "--host", "127.0.0.1", "--port", str(port)], env, log).start()
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: answers(f"{base}/health"), what="the API to start")
            yield base
        finally:
            api.stop()

    def drain(
        self,
        figure_id: str = "drain",
        *options: str,
        spec: Callable[[int], dict[str, Any]] = lambda n: {"task": NOOP},
        setting: str = "",
    ) -> None:
        """Drain pre-enqueued no-op jobs (job n: `spec(n)`) with `errands run --workers 2
        [options]`."""
        jobs = self.sizes.drain
        self._enqueue_backlog([spec(n) for n in range(jobs)])
        with self._draining(jobs, *options) as (daemon, cpu):
            memory = sum(rss_megabytes(pid) for pid in [daemon.pid, *daemon.children()])
        seconds = self._busy_seconds()
        rate = jobs / seconds
        self.drains[figure_id] = rate
        self._add(
            Figure(
                figure_id,
                f"{jobs:,} no-op jobs{setting}, 2 workers {' '.join(options) or '(defaults)'}",
                rate,
                "jobs/s",
                ratio_to="drain" if setting else "pgbench -N 4 clients",
            )
        )
        self._add_cpu(figure_id, jobs, cpu)
        if figure_id == "drain":  # once: the other drains run the same processes
            self._add(
                Figure(
                    "memory",
                    "RSS of supervisor + 2 workers + HTTP child after the drain",
                    memory,
                    "MB",
                )
            )

    def _enqueue_backlog(self, specs: list[dict[str, Any]]) -> None:
        """Store `specs` in the default queue, paused: nothing runs before `_draining`."""
        with open_connection(self.url, autocommit=True) as conn:
            queue_control.pause(conn, "default")
        with Client(self.url) as client:
            for first in range(0, len(specs), 1000):
                client.enqueue_many(specs[first : first + 1000])

    @contextmanager
    def _draining(
        self, jobs: int, *options: str
    ) -> Iterator[tuple[DaemonProcess, dict[str, tuple[str, float | None]]]]:
        """Start `errands run [options]` beside the paused backlog of `jobs`, wait until its
        workers and HTTP child have started, resume the queue and wait until the backlog is
        done; yields the daemon (still running) and the CPU each side spent draining.

        The start-up stays out of the figures: on two cores, a daemon starting (imports,
        forks, the HTTP child) took CPU from the first workers' claims and halved the rate
        of a 3,000-job drain's first second (docs/explanation/benchmarks.md).
        """
        daemon = self._daemon(*options)
        try:
            health = f"http://127.0.0.1:{daemon.args[daemon.args.index('--port') + 1]}/health"
            wait_for(lambda: answers(health), what="the daemon's HTTP child")
            self._wait_for_workers(2)
            postgres_cpu = self._postgres_cpu()
            workers_before = tree_cpu_seconds(daemon.pid)
            with open_connection(self.url, autocommit=True) as conn:
                queue_control.resume(conn, "default")
            self._wait_until_drained(jobs)
            cpu = {
                "workers": ("supervisor + workers", tree_cpu_seconds(daemon.pid) - workers_before),
                "postgres": ("PostgreSQL", postgres_cpu()),
            }
            yield daemon, cpu
        finally:
            daemon.stop()

    def drain_immediate(self) -> None:
        self.drain("drain-immediate", "--ack", "immediate")

    def drain_prefetch(self) -> None:
        self.drain("drain-prefetch", "--prefetch", "32")

    def chain(self) -> None:
        """Drain a chain of no-op jobs, each waiting for the one before (a workflow): every
        job is claimable only in the commit that completes its parent, so this is the
        hand-over's round trip, job after job, beside the plain drain's batches."""
        jobs = self.sizes.chain
        with Client(self.url) as client:
            client.enqueue_workflow(
                [{"ref": "0", "task": NOOP}]
                + [{"ref": str(n), "task": NOOP, "after": [str(n - 1)]} for n in range(1, jobs)]
            )
        daemon = self._daemon()
        try:
            self._wait_until_drained(jobs)
        finally:
            daemon.stop()
        rate = jobs / self._busy_seconds()
        plain = next((f.value for f in self.figures if f.id == "drain"), None)
        details = {} if plain is None else {"ratio_to_drain": rate / plain}
        workload = f"a chain of {jobs:,} no-op jobs, 2 workers (defaults)"
        self._add(Figure("chain", workload, rate, "jobs/s", details=details))
        if plain is not None:
            self._add(
                Figure("chain / drain", workload + ", as a ratio to drain", rate / plain, "x")
            )

    def fan(self) -> None:
        """Fan-out: the completion of one parent hands over to all its children in one
        statement (timed as the statement). Fan-in: parents completed by a daemon in
        batches, each batch counting down the one child's counter once."""
        jobs = self.sizes.fan
        with Client(self.url) as client, open_connection(self.url, autocommit=True) as conn:
            parent = client.enqueue(NOOP, queue="fan")
            client.enqueue_many([{"task": NOOP, "after": [parent.id]} for _ in range(jobs)])
            (held,) = claim(conn, "bench", ["fan"], 1, 60)
            started = time.perf_counter()
            complete(conn, "bench", [Completion(held.id, held.attempts, "null")])
            seconds = time.perf_counter() - started
        self._add(
            Figure(
                "fan-out",
                f"completing one parent makes its {jobs:,} waiting children pending",
                seconds * 1000,
                "ms",
            )
        )
        self._reset()
        with Client(self.url) as client:
            parents = client.enqueue_many([{"task": NOOP}] * jobs)
            client.enqueue(NOOP, after=[p.id for p in parents])
        daemon = self._daemon()
        try:
            self._wait_until_drained(jobs + 1)
        finally:
            daemon.stop()
        rate = (jobs + 1) / self._busy_seconds()
        workload = f"{jobs:,} parents of one child drained, 2 workers (defaults)"
        self._add(Figure("fan-in", workload, rate, "jobs/s", ratio_to="pgbench -N 4 clients"))

    def drain_limited(self) -> None:
        """The drain's jobs under a concurrency limit of 50 across the daemon (2 workers of 32
        threads: 64 slots), as a ratio to the unlimited drain."""
        self._declare_limits()
        self.drain("drain-limited", spec=limited_job, setting=" limited to 50 at once")

    def drain_per_key(self) -> None:
        """The drain's jobs spread over 100 keys, at most one in progress per key: every claim
        serves many keys in turn. A ratio to the unlimited drain."""
        self._declare_limits()
        self.drain(
            "drain-per-key",
            spec=per_key_job,
            setting=f" over {PER_KEY_KEYS} keys, one at once per key",
        )

    def _declare_limits(self) -> None:
        """Write the bench tasks' limits before their jobs are stored, as a running worker
        would have: each job is filed under its limit group as it is stored."""
        with open_connection(self.url, autocommit=True) as conn:
            declare_task_limits(
                conn, {t.name: t.limits for t in (bench_tasks.limited, bench_tasks.per_key)}
            )

    def fairness(self, figure_id: str = "fairness", *options: str) -> None:
        """20 jobs of 2 s among no-op jobs: how long a no-op job, once a worker has claimed
        it, waits to start while a slot somewhere is not running a slow job (so it could
        have run there). Waiting in the queue itself is not counted: it is the drain."""
        jobs = self.sizes.drain
        every = jobs // SLOW_JOBS
        specs = [
            {"task": SLOW, "payload": {"seconds": SLOW_SECONDS}}
            if n % every == every // 2
            else {"task": STAMP}
            for n in range(jobs)
        ]
        self._enqueue_backlog(specs)
        with self._draining(jobs, *options):
            slots = self._slots()
        waits = self._waits_beside_idle_slots(slots)
        setup = (
            f"{jobs - SLOW_JOBS:,} no-op + {SLOW_JOBS} jobs of {SLOW_SECONDS:g} s, 2 workers "
            f"{' '.join(options) or '(defaults)'}"
        )
        workload = f"{setup}: claimed no-op job's wait while a slot was idle"
        cuts = statistics.quantiles(waits, n=100, method="inclusive")
        self._add(Figure(f"{figure_id} p99", workload, cuts[98], "ms"))
        self._add(Figure(f"{figure_id} max", workload, max(waits), "ms"))
        self._add(
            Figure(
                f"{figure_id} drain",
                setup,
                jobs / self._busy_seconds(),
                "jobs/s",
                ratio_to="pgbench -N 4 clients",
            )
        )

    def fairness_prefetch(self) -> None:
        self.fairness("fairness-prefetch", "--prefetch", "32")

    def _slots(self) -> int:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return sum(w.concurrency for w in live_workers(conn, silence_seconds=60))

    def _waits_beside_idle_slots(self, slots: int) -> list[float]:
        """For each no-op job, ms from its claim to its start, less any time every slot ran a
        slow job (the tasks return when they ran; the claim time is the row's started_at)."""
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "select task, extract(epoch from started_at)::float8, result from errands_jobs"
            ).fetchall()
        events = sorted(
            (at, step)
            for task, _, result in rows
            if task == SLOW
            for at, step in ((result[0], 1), (result[1], -1))
        )
        busy, full, since = 0, [], 0.0  # `full`: periods when every slot ran a slow job
        for at, step in events:
            if busy >= slots:
                full.append((since, at))
            busy, since = busy + step, at
        waits = []
        for task, claimed, started in rows:
            if task == STAMP:
                blocked = sum(max(0.0, min(e, started) - max(b, claimed)) for b, e in full)
                waits.append(max(0.0, started - claimed - blocked) * 1000)
        return waits

    def latency(self) -> None:
        daemon = self._daemon()
        try:
            self._wait_for_workers(2)
            self._measure_latency("latency", "idle daemon")
        finally:
            daemon.stop()

    def latency_during_drain(self) -> None:
        """Latency at 100 jobs/s on one worker process while another drains a backlog."""
        backlog = 3 * self.sizes.drain  # outlasts the latency jobs' 10 s at one process's drain
        with Client(self.url) as client:
            for first in range(0, backlog, 1000):
                client.enqueue_many(
                    [{"task": NOOP, "queue": BULK_QUEUE}] * min(1000, backlog - first)
                )
        # The last --workers given wins (click), over the two _daemon passes by default.
        serving = self._daemon("--workers", "1", "--queues", "default")
        try:
            self._wait_for_workers(1)
            draining = self._daemon("--workers", "1", "--queues", BULK_QUEUE)
            try:
                wait_for(self._drain_started, what="the drain to start")
                self._measure_latency(
                    "latency during drain",
                    f"one worker process while another drains {backlog:,} no-op jobs",
                )
                if not self._drain_outlasted_latency():
                    self.report("  (the drain ended before the last latency job started)")
            finally:
                draining.stop()
        finally:
            serving.stop()

    def _drain_started(self) -> bool:
        with open_connection(self.url, autocommit=True) as conn:
            row = conn.execute(
                "select exists (select from errands_jobs where queue = %s and state = 'completed')",
                (BULK_QUEUE,),
            ).fetchone()
        return bool(row and row[0])

    def _drain_outlasted_latency(self) -> bool:
        with open_connection(self.url, autocommit=True) as conn:
            row = conn.execute(
                "select (select max(finished_at) from errands_jobs where queue = %s)"
                " > (select max(started_at) from errands_jobs where queue = 'default')",
                (BULK_QUEUE,),
            ).fetchone()
        return bool(row and row[0])

    def _measure_latency(self, figure_id: str, setting: str) -> None:
        """Enqueue no-op jobs at a steady 100/s into "default", and report enqueue to start."""
        jobs, rate = self.sizes.latency_jobs, 100.0
        with Client(self.url) as client:
            start = time.perf_counter()
            for n in range(jobs):
                time.sleep(max(0.0, start + n / rate - time.perf_counter()))
                client.enqueue(NOOP)
        self._wait_until_drained(jobs)
        with open_connection(self.url) as conn:
            waits = [
                row[0] * 1000
                for row in conn.execute(
                    "select extract(epoch from started_at - created_at)::float8"
                    " from errands_jobs where queue = 'default'"
                )
            ]
        cuts = statistics.quantiles(waits, n=100, method="inclusive")
        for name, value in (
            ("p50", cuts[49]),
            ("p95", cuts[94]),
            ("p99", cuts[98]),
            ("max", max(waits)),
        ):
            workload = f"enqueue to start, {rate:.0f} jobs/s, {setting}"
            self._add(Figure(f"{figure_id} {name}", workload, value, "ms"))

    def drain_async(self) -> None:
        """Sleeping coroutine jobs (1 s each) through ONE worker process, by async concurrency."""
        for slots in (100, 1000):  # the default, and enough to see the process's own ceiling
            jobs = min(self.sizes.async_jobs, slots * 20)
            with Client(self.url) as client:
                for first in range(0, jobs, 1000):
                    batch = [{"task": NAP, "payload": {"seconds": 1}}] * min(1000, jobs - first)
                    client.enqueue_many(batch)
            daemon = self._daemon("--workers", "1", "--async-concurrency", str(slots))
            try:
                self._wait_until_drained(jobs)
            finally:
                daemon.stop()
            self._add(
                Figure(
                    f"drain-async {slots}",
                    f"{jobs:,} jobs sleeping 1 s (asyncio), 1 worker process, "
                    f"--async-concurrency {slots} (ceiling {slots} jobs/s)",
                    jobs / self._busy_seconds(),
                    "jobs/s",
                )
            )
            self._reset()

    def wait_latency(self) -> None:
        """From a job's completion (its commit) to Client.wait returning, one wait at a time."""
        daemon = self._daemon()
        latencies = []
        try:
            self._wait_for_workers(2)
            with Client(self.url) as client:
                for _ in range(self.sizes.waits):
                    # The job runs 20 ms, so that wait() is already waiting when it completes.
                    job = client.enqueue(SLEEP, {"seconds": 0.02})
                    finished = client.wait(job.id, timeout=60)
                    returned = time.time()
                    assert finished.finished_at is not None
                    latencies.append((returned - finished.finished_at.timestamp()) * 1000)
        finally:
            daemon.stop()
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        for name, value in (("p50", cuts[49]), ("p99", cuts[98]), ("max", max(latencies))):
            self._add(
                Figure(
                    f"wait-latency {name}",
                    "job completed to Client.wait returning, idle daemon",
                    value,
                    "ms",
                )
            )

    def cancel_latency(self) -> None:
        """From a cancel request of a running job to its attempt recorded cancelled: a thread
        task checking every millisecond and a sleeping coroutine, with LISTEN and polling."""
        for mode, flags in (("listen", ()), ("poll-only", ("--poll-only",))):
            daemon = self._daemon("--workers", "1", *flags)
            try:
                self._wait_for_workers(1)
                for kind, task, payload in (
                    ("thread", SPIN, {"seconds": 120}),
                    ("coroutine", NAP, {"seconds": 120}),
                ):
                    latencies = self._cancel_latencies(task, payload)
                    for name, value in _percentiles(latencies):
                        self._add(
                            Figure(
                                f"cancel-latency {kind} {mode} {name}",
                                f"cancel request to the {kind} task's attempt recorded cancelled,"
                                f" {mode}, {len(latencies)} jobs (default lease and poll interval)",
                                value,
                                "ms",
                            )
                        )
            finally:
                daemon.stop()

    def _cancel_latencies(self, task: str, payload: dict[str, Any]) -> list[float]:
        """Cancel running jobs one at a time, each at a random moment after it started (the
        poll interval's phase varies); milliseconds from the request to the job cancelled,
        by PostgreSQL's clock for both."""
        latencies = []
        pace = random.Random(24)
        with Client(self.url) as client:
            for _ in range(self.sizes.cancels):
                job = client.enqueue(task, payload)

                def started(job_id: int = job.id) -> bool:
                    running = client.get(job_id)
                    return running is not None and running.started_at is not None

                wait_for(started, what="the job to start", interval=0.005)
                time.sleep(pace.uniform(0.05, 1.0))
                client.cancel(job.id)
                done = client.wait(job.id, timeout=60)
                assert done.finished_at and done.cancel_requested_at, "it ended cancelled"
                seconds = (done.finished_at - done.cancel_requested_at).total_seconds()
                latencies.append(seconds * 1000)
        return latencies

    def progress_writes(self) -> None:
        """A job reporting progress in a tight loop: how often it reports, and how often its
        row is written (the claim and the completion included)."""
        seconds = self.sizes.progress_seconds
        updates_before = self._row_updates()
        daemon = self._daemon("--workers", "1")
        try:
            with Client(self.url) as client:
                job = client.wait(client.enqueue(PROGRESS, {"seconds": seconds}).id, timeout=120)
        finally:
            daemon.stop()  # its backends flush their statistics as they exit
        assert job.started_at is not None and job.finished_at is not None
        ran = (job.finished_at - job.started_at).total_seconds()
        updates = self._row_updates() - updates_before
        workload = f"one job reporting progress in a tight loop for {seconds:g} s"
        self._add(Figure("progress calls", workload, job.result / ran, "calls/s"))
        self._add(
            Figure(
                "progress row writes",
                f"{workload}: updates of its row per second, claim and completion included",
                updates / ran,
                "writes/s",
                details={"updates": updates, "seconds": ran, "calls": job.result},
            )
        )

    def _row_updates(self) -> int:
        """Rows of errands_jobs updated so far, by the statistics every backend reported."""
        with open_connection(self.url, autocommit=True) as conn:
            conn.execute("select pg_stat_force_next_flush()")
            row = conn.execute(
                "select n_tup_upd from pg_stat_user_tables where relname = 'errands_jobs'"
            ).fetchone()
        return int(row[0]) if row else 0

    def recovery(self) -> None:
        daemon = self._daemon()
        try:
            self._wait_for_workers(2)
            recovered = self._kill_and_time(lambda owner: os.kill(_pid_of(owner), signal.SIGKILL))
        finally:
            daemon.stop()
        self._add(
            Figure("recovery", "worker SIGKILLed mid-job, until the job runs again", recovered, "s")
        )

    def recovery_supervisor(self) -> None:
        lease = self.sizes.supervisor_lease
        env = {"ERRANDS_LEASE_SECONDS": str(lease)}
        first = self._daemon(**env)
        second: list[DaemonProcess] = []

        def kill_supervisor(owner: str) -> None:
            first.signal(signal.SIGKILL)
            first.wait()
            second.append(self._daemon(**env))

        try:
            self._wait_for_workers(2)
            recovered = self._kill_and_time(kill_supervisor)
        finally:
            first.kill()
            for daemon in second:
                daemon.stop()
        self._add(
            Figure(
                "recovery-supervisor",
                f"supervisor SIGKILLed, another started at once (lease {lease:g}s), "
                "until the job runs again",
                recovered,
                "s",
            )
        )

    def scale(self) -> None:
        """Drain throughput by worker processes and supervisors, and what an idle fleet costs.

        Each setting runs on its own, direct and through a PgBouncer in
        transaction pooling mode: `workers` processes split evenly across
        `supervisors` separate `errands run` (stand-ins for hosts).
        """
        with PgBouncer(self.server_url, pool_size=40) as bouncer:
            for route, url in (("direct", self.url), ("pgbouncer", bouncer.url(self.url))):
                for workers in SCALE_WORKERS:
                    for supervisors in (s for s in SCALE_SUPERVISORS if s <= workers):
                        self._scale_drain(route, url, workers, supervisors)
                        self._reset()
                self._idle_fleet(route, url, bouncer)
                self._reset()

    def _scale_drain(self, route: str, url: str, workers: int, supervisors: int) -> None:
        jobs = self.sizes.scale_drain
        with Client(self.url) as client:
            for first in range(0, jobs, 1000):
                client.enqueue_many([{"task": NOOP}] * min(1000, jobs - first))
        fleet = self._fleet(url, route == "pgbouncer", supervisors, workers // supervisors)
        try:
            self._wait_until_drained(jobs)
        finally:
            for daemon in fleet:
                daemon.stop()
        self._add(
            Figure(
                f"scale {route} {workers}w {supervisors}s",
                f"{jobs:,} no-op jobs, {workers} worker processes across {supervisors} "
                f"supervisor(s), {route}",
                jobs / self._busy_seconds(),
                "jobs/s",
                ratio_to="pgbench -N 4 clients",
                details={"route": route, "workers": workers, "supervisors": supervisors},
            )
        )

    def _idle_fleet(self, route: str, url: str, bouncer: PgBouncer) -> None:
        """Database CPU spent on worker processes polling one empty queue, per worker-second."""
        workers = IDLE_SUPERVISORS * IDLE_WORKERS_EACH
        postmaster = self._postmaster_pid()
        if postmaster is None:
            self.report("  idle fleet: PostgreSQL runs elsewhere; its CPU cannot be read")
            return
        assert bouncer.process is not None
        seconds = self.sizes.idle_seconds
        # What the server spends with no worker at all (its own background processes).
        background = _cpu_during(seconds, postmaster)[0]
        fleet = self._fleet(url, route == "pgbouncer", IDLE_SUPERVISORS, IDLE_WORKERS_EACH)
        try:
            self._wait_for_workers(workers)
            time.sleep(2)  # past the start-up: connections, migrations check, first claims
            pg_cpu, bouncer_cpu = _cpu_during(seconds, postmaster, bouncer.process.pid)
        finally:
            for daemon in fleet:
                daemon.stop()
        self._add(
            Figure(
                f"idle {route} db cpu per worker",
                f"PostgreSQL CPU per idle worker per second, its background subtracted: "
                f"{workers} workers across {IDLE_SUPERVISORS} supervisors polling one empty "
                f"queue ({route}, poll 1 s)",
                (pg_cpu - background) / (workers * seconds) * 1000,
                "ms/s",
                details={
                    "postgres_cpu_seconds": pg_cpu,
                    "postgres_background_cpu_seconds": background,
                    "pgbouncer_cpu_seconds": bouncer_cpu if route == "pgbouncer" else None,
                    "window_seconds": seconds,
                    "workers": workers,
                },
            )
        )

    def _fleet(
        self, url: str, pgbouncer: bool, supervisors: int, workers_each: int
    ) -> list[DaemonProcess]:
        """`supervisors` separate `errands run --no-http`, hosts host-1, host-2, ..."""
        env = {
            **os.environ,
            "ERRANDS_DATABASE_URL": url,
            "ERRANDS_PGBOUNCER": "1" if pgbouncer else "0",
            "ERRANDS_LOG_FORMAT": "json",
        }
        command = ["run", "--no-http", "--workers", str(workers_each)]
        command += ["--tasks", "errands.harness.bench_tasks"]
        return [
            DaemonProcess(
                command,
                {**env, "ERRANDS_HOSTNAME": f"host-{n}"},
                self.logs / f"fleet-{uuid.uuid4().hex[:6]}-host-{n}.log",
            ).start()
            for n in range(1, supervisors + 1)
        ]

    # -- helpers ---------------------------------------------------------------------------

    def ui(self) -> None:
        jobs = self.sizes.ui_jobs
        bench_ui.load(self.url, jobs, self.report)
        with self._api() as base:
            medians = bench_ui.measure(base, jobs)
        for page, milliseconds in medians.items():
            self._add(
                Figure(
                    f"ui {page}",
                    f"dashboard page, median of {bench_ui.REQUESTS}, {jobs:,} jobs stored",
                    milliseconds,
                    "ms",
                )
            )

    def _kill_and_time(self, kill: Callable[[str], None]) -> float:
        """Start a long job, kill its holder with `kill`, and time until it runs again."""
        with Client(self.url) as client:
            job = client.enqueue(HOLD, {"seconds": 600})

            def holder() -> str | None:
                held = client.get(job.id)
                return held.lease_owner if held else None

            def started_again() -> datetime | None:
                again = client.get(job.id)
                return again.started_at if again and again.attempts >= 2 else None

            owner = wait_for(holder, what="the job to start", interval=0.005)
            killed_at = time.time()
            kill(owner)
            restarted = wait_for(
                started_again, timeout=120, what="the job to run again", interval=0.005
            )
        return restarted.timestamp() - killed_at

    def _wait_for_workers(self, count: int) -> None:
        def started() -> bool:
            with open_connection(self.url, autocommit=True) as conn:
                return len(live_workers(conn, silence_seconds=60)) >= count

        wait_for(started, what="workers to start")

    def _wait_until_drained(self, jobs: int) -> None:
        wait_until_drained(self.url, timeout=600, what=f"{jobs} jobs to finish")

    def _busy_seconds(self) -> float:
        with open_connection(self.url) as conn:
            busy = "max(finished_at) - min(started_at)"
            row = conn.execute(
                f"select extract(epoch from {busy})::float8 from errands_jobs"
            ).fetchone()
        assert row is not None
        return float(row[0])

    def _add_cpu(
        self, figure_id: str, jobs: int, cpu_by: dict[str, tuple[str, float | None]]
    ) -> None:
        """CPU seconds per 1,000 jobs, by who spent them: robust where throughput is not
        (a shared machine stretches every round trip; CPU per job moves far less)."""
        for short, (who, cpu) in cpu_by.items():
            if cpu is not None:
                self._add(
                    Figure(
                        f"{figure_id} cpu {short}",
                        f"CPU s per 1,000 jobs: {who}",
                        cpu / jobs * 1000,
                        "s",
                    )
                )

    def _postgres_cpu(self) -> Callable[[], float | None]:
        """A meter: CPU the local PostgreSQL spends from now until it is read (None if remote)."""
        postmaster = self._postmaster_pid()
        if postmaster is None:
            return lambda: None
        before = tree_cpu_seconds(postmaster)
        return lambda: tree_cpu_seconds(postmaster) - before

    def _postmaster_pid(self) -> int | None:
        """The local PostgreSQL's parent process; None when the server runs elsewhere."""
        with open_connection(self.url) as conn:
            row = conn.execute("select pg_backend_pid()").fetchone()
            assert row is not None
            stat = ProcStat.read(row[0])
        return stat.ppid if stat else None


def _percentiles(values: list[float]) -> list[tuple[str, float]]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return [("p50", cuts[49]), ("p99", cuts[98]), ("max", max(values))]


def _cpu_during(seconds: float, *pids: int) -> list[float]:
    """CPU seconds each process tree spends over the next `seconds`."""
    before = [tree_cpu_seconds(pid) for pid in pids]
    time.sleep(seconds)
    return [tree_cpu_seconds(pid) - cpu for pid, cpu in zip(pids, before, strict=True)]


def wrk_post(url: str, body: str, connections: int, seconds: float) -> float:
    """Requests per second that `wrk` sustains POSTing `body`; every answer must be a 2xx."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise ConfigurationError("wrk not found: install it (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        out = subprocess.run(
            [
                wrk,
                "-t",
                "2",
                "-c",
                str(connections),
                "-d",
                f"{round(seconds)}s",
                "-s",
                str(script),
                url,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"the API refused requests under load:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return float(match.group(1))


def _pid_of(owner: str) -> int:
    return int(owner.split(":")[1])


def environment() -> dict[str, Any]:
    """The machine a run happened on, for the record."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def as_json(figures: list[Figure], postgres: dict[str, Any]) -> dict[str, Any]:
    """The run for the record: the machine, the server as `server.describe` saw it, the figures."""
    return {**environment(), "postgres": postgres, "figures": [asdict(f) for f in figures]}


def table(figures: list[Figure]) -> str:
    lines = [f"{'id':<30} {'figure':>12} {'unit':<7} {'ratio':>7}  workload"]
    for f in figures:
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        lines.append(f"{f.id:<30} {f.value:>12,.3f} {f.unit:<7} {ratio:>7}  {f.workload}")
    return "\n".join(lines)
