"""`errands chaos`: faults at random moments under load, then a verdict on the invariants.

A run creates a fresh database, starts a daemon with short leases, submits a
mixed workload through the Python client and the HTTP API, injects faults at
seeded random moments (SIGKILL or SIGSTOP a busy worker, SIGKILL the supervisor
or the HTTP child, restart PostgreSQL; and, chaos_partitions.py, cut a process
off without closing anything, or hang PostgreSQL), with hosts' clocks off if
the profile says so, asks running jobs to cancel if it says so, lets the system
settle, and checks the invariants against the tasks' own record of what ran.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import subprocess
import threading
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cached_property, partial
from pathlib import Path
from typing import Any, NamedTuple, cast

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

from errands.client import Client
from errands.database import open_connection
from errands.errors import ErrandsError, InvalidState
from errands.harness import skew
from errands.harness.chaos_partitions import KINDS as CUT_OFF_KINDS
from errands.harness.chaos_partitions import CutOffs
from errands.harness.chaos_tasks import (
    BUDGET,
    KEYED_AT_ONCE,
    LIMITED_AT_ONCE,
    RECORD_TABLES,
    SPARED_FROM_ATTEMPT,
    TRACES,
)
from errands.harness.partition import PartitionProxy
from errands.harness.pgbouncer import PgBouncer
from errands.harness.process import DaemonProcess, alive, free_port
from errands.harness.waiting import answers, drained, wait_for
from errands.schema.migrator import migrate

DOOMED_BUDGET = 3
DELAY_SECONDS = 1.0  # of the workload's delayed jobs
LIMITED_SECONDS = 0.3  # how long a limited job runs
KEYS = ("k1", "k2", "k3")  # the keys of chaos.keyed
TICK_LATENESS_SECONDS = 60.0  # a periodic tick enqueued later than this, or early: a wrong clock


@dataclass(frozen=True)
class Profile:
    duration: float = 120.0
    workers: int = 2
    concurrency: int = 4
    lease_seconds: float = 2.0
    submit_interval: float = 0.15  # seconds between submissions of each submitter
    # Shares of the workload; slow jobs hold a slot for 2.5 leases, so keep them few
    # enough that the workers keep up, or the run cannot settle.
    kind_weights: dict[str, float] = field(
        default_factory=lambda: {
            "quick": 12,
            "slow": 1,
            "slow_async": 1,
            "delayed": 1,
            "flaky": 2,
            "doomed": 1,
        }
    )
    fault_every: tuple[float, float] = (2.0, 6.0)  # seconds between faults, uniformly
    fault_weights: dict[str, float] = field(
        default_factory=lambda: {
            "kill_worker": 4,
            "stop_worker": 1,
            "kill_supervisor": 1,
            "restart_postgres": 1,
            "kill_http": 1,
        }
    )
    settle_seconds: float = 180.0
    # Stand-ins for hosts: separate `errands run` processes, host names host-1, host-2, ...
    supervisors: int = 1
    # Through a PgBouncer in transaction pooling mode that the harness starts itself.
    pgbouncer: bool = False
    # Faults injected once each, in this order, before the random ones.
    scenarios: tuple[str, ...] = ()
    # How long a partition or a hang of PostgreSQL lasts.
    partition_seconds: float = 6.0
    # Each host's wall clock, off by this many seconds (an LD_PRELOAD shim; 0 for the rest).
    clock_offsets: tuple[float, ...] = ()
    # Seconds between cancels of a running slow job, through the client and the API in
    # turn (0: none). Such a job must end cancelled, and never run again.
    cancel_every: float = 0.0
    # Seconds between workflows stored by a client (0: none): three quick jobs, one after
    # all three, one after that. Each must complete, and no attempt start before its
    # parents completed.
    workflow_every: float = 0.0

    @classmethod
    def load(cls, path: Path) -> Profile:
        data = tomllib.loads(path.read_text())
        for name in ("fault_every", "scenarios", "clock_offsets"):
            if name in data:
                data[name] = tuple(data[name])
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        return cls(**data)


@dataclass
class Submission:
    key: str
    kind: str
    task: str
    payload: dict[str, Any]
    via: str  # "python" | "http"
    delay: float | None = None
    outcome: str = "pending"  # accepted | refused | probe (a partition_api probe's key)
    job_id: int | None = None
    detail: str = ""


@dataclass
class CancelRequest:
    """A cancel the harness sent to a job it saw running, and what it answered."""

    job_id: int
    via: str  # "python" | "http"
    answer: str  # in_progress (asked to stop) | cancelled (it was waiting) | refused | unclear
    attempt: int | None = None  # the attempt running when the request was recorded


@dataclass
class Fault:
    kind: str
    at: float  # wall-clock time
    job_id: int | None = None
    attempt: int | None = None
    detail: str = ""


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class Report:
    seed: int
    profile: dict[str, Any]
    database: str
    jobs: dict[str, int]
    executions: int
    duplicate_executions: int
    submissions: dict[str, int]
    faults: dict[str, int]
    recovery_seconds: dict[str, float | None]
    partitions: list[dict[str, Any]]  # each cut off or hang: its figures (chaos_partitions.py)
    stale_writes_refused: int  # fenced writes and renewals the database refused, as logged
    attempts_fenced: int  # attempts stopped as their lease ran out by their worker's clock
    clock_offsets: dict[str, float]
    cancels: dict[str, int]  # cancels of running jobs sent, by answer
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def text(self) -> str:
        lines = [
            f"chaos run, seed {self.seed}: {'PASSED' if self.passed else 'FAILED'}",
            f"  jobs                 {sum(self.jobs.values())}  {dict(self.jobs)}",
            f"  submissions          {self.submissions}",
            f"  executions           {self.executions} starts; "
            f"{self.duplicate_executions} duplicate successful executions",
            f"  faults               {self.faults}",
            "  recovery after kill  "
            + ", ".join(
                f"{k} {v:.3f}s" if v is not None else f"{k} -"
                for k, v in self.recovery_seconds.items()
            ),
        ]
        for cut in self.partitions:
            lines.append(f"  {cut['kind']:<20} {cut['detail']}")
            lines += [
                f"    {name:<48} {f'{v:.2f}s' if v is not None else '-'}"
                for name, v in cut["seconds"].items()
            ]
        if self.partitions:
            lines.append(
                f"  stale writes         {self.stale_writes_refused} refused by the fence, none "
                f"stored (the fencing check); {self.attempts_fenced} attempts stopped by their "
                "worker's own clock"
            )
        if self.clock_offsets:
            lines.append(f"  host clocks          {self.clock_offsets} (seconds off)")
        if self.cancels:
            lines.append(f"  cancels of running   {self.cancels}")
        lines += [
            f"  [{'ok' if c.passed else 'FAIL'}] {c.name}{': ' + c.detail if c.detail else ''}"
            for c in self.checks
        ]
        return "\n".join(lines)


class Chaos:
    def __init__(
        self,
        server_url: str,
        profile: Profile,
        seed: int,
        restart_postgres: Callable[[], None] | None,
        say: Callable[[str], None],
        pgdata: Path | None = None,
    ) -> None:
        self.server_url = server_url
        self.profile = profile
        self.seed = seed
        self.random = random.Random(seed)
        self.restart_postgres = restart_postgres
        self.pgdata = pgdata  # the embedded database's: hang_postgres can SIGSTOP it
        self.say = say
        self.submissions: list[Submission] = []
        self.bursts: list[tuple[str, list[int | None]]] = []
        self.faults: list[Fault] = []
        self.stopped_pids: set[int] = set()
        self.lock = threading.Lock()
        self.logs = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"errands-chaos-{seed}-{uuid.uuid4().hex[:6]}"
        )
        self.logs.mkdir(parents=True)
        self.traces = self.logs / "traces"
        self.traces.mkdir()
        self.daemons: list[DaemonProcess] = []  # every one started, for the final cleanup
        self.hosts: list[DaemonProcess | None] = [None] * profile.supervisors  # current ones
        self.ports = [free_port() for _ in range(profile.supervisors)]
        self.bouncer: PgBouncer | None = None
        self.proxy: PartitionProxy | None = None
        self.cut_offs: CutOffs | None = None
        self.clock_shim: Path | None = None
        self.lease_samples: list[tuple[float, float]] = []  # (min, max) of lease ends - now()
        self.cancels: list[CancelRequest] = []
        self.scripted: list[str] = []  # the profile's scenarios not injected yet

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Report:
        name = f"errands_chaos_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            admin.execute(f"create database {name}".encode())
        # The harness reads and checks directly; the system under test may go through PgBouncer.
        self.direct_url = self.url = make_conninfo(self.server_url, dbname=name)
        with open_connection(self.url, autocommit=True) as conn:
            migrate(conn)
            conn.execute(RECORD_TABLES.encode())
        report = None
        try:
            if self.profile.pgbouncer:
                self.bouncer = PgBouncer(self.server_url).start()
                self.url = self.bouncer.url(self.direct_url)
            self.client_url = self.url  # the harness's own submissions: never cut off
            if self._cuts_off():
                self._start_proxy()
            if any(self.profile.clock_offsets):
                self.clock_shim = skew.build(self.logs)
            for host in range(len(self.hosts)):
                self._start_daemon(host)
            self._wait_for_http()
            self.say(
                f"storm: {self.profile.duration:g}s, seed {self.seed}, "
                f"{len(self.hosts)} supervisor(s){' through PgBouncer' if self.bouncer else ''}, "
                f"logs in {self.logs}"
            )
            self._storm()
            self.say("settling ...")
            settled = self._settle()
            settled_at = self._database_now() if settled else None
            exit_codes = [daemon.stop(timeout=60) for daemon in self._current()]
            report = self._verdict(settled, exit_codes, name, settled_at)
            return report
        finally:
            if self.cut_offs is not None:
                self.cut_offs.resume()
            for daemon in self.daemons:
                daemon.kill()
            if self.proxy is not None:
                self.proxy.stop()
            if self.bouncer is not None:
                self.bouncer.stop()
            if report is not None and report.passed:
                with psycopg.connect(self.server_url, autocommit=True) as admin:
                    admin.execute(f"drop database {name} with (force)".encode())

    def _cuts_off(self) -> bool:
        """Whether the profile has faults that need the partition proxy."""
        kinds = set(self.profile.scenarios) | set(self.profile.fault_weights)
        return bool(kinds & set(CUT_OFF_KINDS))

    def _start_proxy(self) -> None:
        self.proxy = PartitionProxy(self.url).start()
        self.url = self.proxy.url(self.url)
        self.cut_offs = CutOffs(
            proxy=self.proxy,
            direct_url=self.direct_url,
            hosts=self._current,
            api_base=self._base,
            seconds=self.profile.partition_seconds,
            pgdata=self.pgdata,
            pick=self._pick,
            record_probe=self._record_probe,
        )

    def _pick(self, options: list[Any]) -> Any:
        with self.lock:
            return self.random.choice(options)

    def _record_probe(self, key: str) -> None:
        """partition_api's probe may store a job: the verdict counts it like any other."""
        with self.lock:
            self.submissions.append(
                Submission(key, "quick", "chaos.quick", {}, "http", None, "probe")
            )

    def _start_daemon(self, host: int) -> None:
        p = self.profile
        env: dict[str, str] = {
            **os.environ,
            TRACES: str(self.traces),
            "ERRANDS_DATABASE_URL": self.url,
            "ERRANDS_PGBOUNCER": "1" if self.bouncer else "0",
            "ERRANDS_HOSTNAME": f"host-{host + 1}",
            "ERRANDS_LOG_FORMAT": "json",
            "ERRANDS_LEASE_SECONDS": str(p.lease_seconds),
            "ERRANDS_REAPER_SECONDS": str(p.lease_seconds / 4),
            "ERRANDS_POLL_SECONDS": "0.25",
            "ERRANDS_GRACE_SECONDS": "5",
            "ERRANDS_BACKOFF_BASE_SECONDS": "0.1",
            "ERRANDS_BACKOFF_MAX_SECONDS": "1",
        }
        offset = p.clock_offsets[host] if host < len(p.clock_offsets) else 0.0
        if offset and self.clock_shim is not None:
            env = skew.skewed(env, self.clock_shim, offset)
        args = [
            "run",
            "--workers",
            str(p.workers),
            "--concurrency",
            str(p.concurrency),
            "--tasks",
            "errands.harness.chaos_tasks",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.ports[host]),
        ]
        log = self.logs / f"daemon-{len(self.daemons)}-host-{host + 1}.log"
        daemon = DaemonProcess(args, env, log).start()
        self.daemons.append(daemon)
        self.hosts[host] = daemon

    def _current(self) -> list[DaemonProcess]:
        return [daemon for daemon in self.hosts if daemon is not None]

    def _wait_for_http(self) -> None:
        for host in range(len(self.hosts)):
            health = f"{self._base(host)}/health"
            wait_for(partial(answers, health), timeout=30, what="the daemons' HTTP APIs")

    def _base(self, host: int) -> str:
        """The HTTP API of supervisor `host` (its port stays the same across restarts)."""
        return f"http://127.0.0.1:{self.ports[host % len(self.ports)]}"

    def _storm(self) -> None:
        end = time.monotonic() + self.profile.duration
        threads = [
            threading.Thread(target=self._submit_python, args=(end,), name="chaos-python"),
            threading.Thread(target=self._submit_http, args=(end,), name="chaos-http"),
            threading.Thread(target=self._bursts, args=(end,), name="chaos-bursts"),
            threading.Thread(target=self._sample_leases, args=(end,), name="chaos-leases"),
        ]
        if self.profile.cancel_every > 0:
            threads.append(
                threading.Thread(target=self._cancel_running, args=(end,), name="chaos-cancels")
            )
        if self.profile.workflow_every > 0:
            threads.append(
                threading.Thread(target=self._submit_workflows, args=(end,), name="chaos-workflows")
            )
        for thread in threads:
            thread.start()
        try:
            self._inject_faults(end)
        finally:
            for thread in threads:
                thread.join()
            for pid in list(self.stopped_pids):
                _signal(pid, signal.SIGCONT)

    # -- the workload ----------------------------------------------------------------------

    def _new_submission(self, via: str, n: int) -> Submission:
        with self.lock:
            weights = self.profile.kind_weights
            kind = self.random.choices(list(weights), weights=list(weights.values()))[0]
            key = self.random.choice(KEYS) if kind == "keyed" else KEYS[0]
        slow = {"seconds": self.profile.lease_seconds * 2.5}
        work: dict[str, tuple[str, dict[str, Any]]] = {
            "quick": ("chaos.quick", {}),
            "slow": ("chaos.slow", slow),
            "slow_async": ("chaos.slow_async", slow),
            "delayed": ("chaos.quick", {}),
            "flaky": ("chaos.flaky", {"fail_times": 2}),
            "doomed": ("chaos.doomed", {}),
            "limited": ("chaos.limited", {"seconds": LIMITED_SECONDS}),
            "keyed": ("chaos.keyed", {"key": key, "seconds": LIMITED_SECONDS}),
        }
        task, payload = work[kind]
        delay = DELAY_SECONDS if kind == "delayed" else None
        submission = Submission(f"{via}-{n}", kind, task, payload, via, delay)
        with self.lock:
            self.submissions.append(submission)
        return submission

    def _submit_python(self, end: float) -> None:
        with Client(self.client_url) as client:
            n = 0
            while time.monotonic() < end:
                n += 1
                s = self._new_submission("python", n)
                budget = DOOMED_BUDGET if s.kind == "doomed" else BUDGET
                self._until_answered(s, end, partial(_enqueue, client, s, budget))
                time.sleep(self.profile.submit_interval)

    def _submit_http(self, end: float) -> None:
        apis = [httpx.Client(base_url=self._base(h), timeout=5) for h in range(len(self.hosts))]
        try:
            n = 0
            while time.monotonic() < end:
                n += 1
                http = apis[n % len(apis)]  # every host's API in turn
                s = self._new_submission("http", n)
                body = {
                    "task": s.task,
                    "payload": s.payload,
                    "max_attempts": DOOMED_BUDGET if s.kind == "doomed" else BUDGET,
                    **({"delay": s.delay} if s.delay is not None else {}),
                }
                self._until_answered(s, end, partial(_post, http, body, s.key))
                time.sleep(self.profile.submit_interval)
        finally:
            for api in apis:
                api.close()

    def _until_answered(self, s: Submission, end: float, submit: Callable[[], int]) -> None:
        """Submit; after an unclear failure (connection lost, database down), again, same key."""
        for _ in range(200):
            try:
                s.job_id, s.outcome = submit(), "accepted"
                return
            except (httpx.HTTPError, psycopg.Error, _Refused) as exc:
                s.outcome, s.detail = "refused", f"{type(exc).__name__}: {exc}"[:200]
                if time.monotonic() > end + 30:
                    return
                time.sleep(0.2)

    def _bursts(self, end: float) -> None:
        """Eight clients submit one key at the same instant; one job must come of it."""
        n = 0
        while time.monotonic() < end:
            n += 1
            key = f"burst-{n}"
            barrier = threading.Barrier(8)
            ids: list[int | None] = [None] * 8

            def one(
                i: int,
                key: str = key,
                barrier: threading.Barrier = barrier,
                ids: list[int | None] = ids,
            ) -> None:
                with httpx.Client(base_url=self._base(i), timeout=5) as http:
                    barrier.wait()
                    try:
                        ids[i] = _post(http, {"task": "chaos.quick", "max_attempts": BUDGET}, key)
                    except (httpx.HTTPError, _Refused):
                        ids[i] = None

            threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            self.bursts.append((key, ids))
            time.sleep(2)

    def _sample_leases(self, end: float) -> None:
        """How far from PostgreSQL's now() the leases in progress end, twice a second."""
        while time.monotonic() < end:
            with (
                contextlib.suppress(psycopg.Error),
                open_connection(self.direct_url, connect_timeout=2) as conn,
            ):
                row = conn.execute(
                    "select extract(epoch from min(lease_expires_at) - now())::float8,"
                    " extract(epoch from max(lease_expires_at) - now())::float8"
                    " from errands_jobs where state = 'in_progress'"
                ).fetchone()
                if row is not None and row[0] is not None:
                    self.lease_samples.append((row[0], row[1]))
            time.sleep(0.5)

    def _cancel_running(self, end: float) -> None:
        """Ask a running slow job to cancel every `cancel_every` seconds, by client and API."""
        with Client(self.client_url) as client, httpx.Client(timeout=5) as http:
            n = 0
            while time.monotonic() + self.profile.cancel_every < end:
                time.sleep(self.profile.cancel_every)
                job_id = self._running_slow_job()
                if job_id is None:
                    continue
                n += 1
                via = "python" if n % 2 else "http"
                request = CancelRequest(job_id, via, "unclear")
                try:
                    if via == "python":
                        request.answer, request.attempt = _cancel_by_client(client, job_id)
                    else:
                        url = f"{self._base(n)}/jobs/{job_id}/cancel"
                        request.answer, request.attempt = _cancel_by_http(http, url)
                except (httpx.HTTPError, psycopg.Error, _Refused):
                    pass  # a fault cut it off: recorded or not, the verdict accepts either
                with self.lock:
                    self.cancels.append(request)

    def _submit_workflows(self, end: float) -> None:
        """A fan-in and a chain of quick jobs every `workflow_every` seconds, each workflow
        stored in one transaction: whole, or (cut off by a fault) not at all."""
        parts = [f"part{n}" for n in range(3)]
        jobs = [
            *({"ref": ref, "task": "chaos.quick", "max_attempts": BUDGET} for ref in parts),
            {"ref": "join", "task": "chaos.quick", "after": parts, "max_attempts": BUDGET},
            {"ref": "last", "task": "chaos.quick", "after": ["join"], "max_attempts": BUDGET},
        ]
        with Client(self.client_url) as client:
            while time.monotonic() + self.profile.workflow_every < end:
                time.sleep(self.profile.workflow_every)
                with contextlib.suppress(psycopg.Error, ErrandsError):
                    client.enqueue_workflow(jobs)

    def _running_slow_job(self) -> int | None:
        try:
            with open_connection(self.direct_url, connect_timeout=2) as conn:
                rows = conn.execute(
                    "select id from errands_jobs where state = 'in_progress'"
                    " and task in ('chaos.slow', 'chaos.slow_async')"
                    " and cancel_requested_at is null order by id"
                ).fetchall()
        except psycopg.Error:
            return None
        with self.lock:
            return self.random.choice(rows)[0] if rows else None

    # -- faults ----------------------------------------------------------------------------

    def _possible(self, kind: str) -> bool:
        if kind == "restart_postgres":
            return self.restart_postgres is not None
        if kind == "hang_postgres":
            return self.pgdata is not None
        return True

    def _inject_faults(self, end: float) -> None:
        weights = {k: w for k, w in self.profile.fault_weights.items() if self._possible(k)}
        self.scripted = [kind for kind in self.profile.scenarios if self._possible(kind)]
        while True:
            time.sleep(self.random.uniform(*self.profile.fault_every))
            if time.monotonic() >= end:
                return
            if self.scripted:
                kind = self.scripted[0]  # again at the next moment, should it find no aim
            else:
                kind = self.random.choices(list(weights), weights=list(weights.values()))[0]
            fault = getattr(self, f"_{kind}")()
            if fault is not None:
                if self.scripted and kind == self.scripted[0]:
                    self.scripted.pop(0)
                self.faults.append(fault)
                self.say(f"  fault: {fault.kind} {fault.detail}")

    def _cut_off(self, kind: str) -> Fault | None:
        """A fault of chaos_partitions.py; it returns once healed."""
        assert self.cut_offs is not None, "the profile names no fault that needs the proxy"
        cut = getattr(self.cut_offs, kind)()
        return None if cut is None else Fault(kind, cut.at, detail=cut.detail)

    def _partition_worker(self) -> Fault | None:
        return self._cut_off("partition_worker")

    def _partition_supervisor(self) -> Fault | None:
        return self._cut_off("partition_supervisor")

    def _partition_api(self) -> Fault | None:
        return self._cut_off("partition_api")

    def _hang_postgres(self) -> Fault | None:
        return self._cut_off("hang_postgres")

    def _busy_worker(self) -> tuple[int, int, int] | None:
        """(pid, job id, attempt) of a worker of a current daemon running a job."""
        mine = {pid for daemon in self._current() for pid in daemon.children()}
        try:
            with open_connection(self.direct_url, connect_timeout=2) as conn:
                rows = conn.execute(
                    "select lease_owner, id, attempts from errands_jobs where state = 'in_progress'"
                ).fetchall()
        except psycopg.Error:
            return None
        running = [(int(owner.split(":")[1]), job, attempt) for owner, job, attempt in rows]
        targets = fair_targets(running, mine - self.stopped_pids)
        return self.random.choice(targets) if targets else None

    def _kill_worker(self) -> Fault | None:
        target = self._busy_worker()
        if target is None:
            return None
        pid, job_id, attempt = target
        _signal(pid, signal.SIGKILL)
        return Fault("kill_worker", time.time(), job_id, attempt, f"pid {pid} running job {job_id}")

    def _stop_worker(self) -> Fault | None:
        target = self._busy_worker()
        if target is None:
            return None
        pid, job_id, attempt = target
        pause = self.profile.lease_seconds * 2.5
        _signal(pid, signal.SIGSTOP)
        self.stopped_pids.add(pid)

        def wake() -> None:
            _signal(pid, signal.SIGCONT)
            self.stopped_pids.discard(pid)

        threading.Timer(pause, wake).start()
        return Fault(
            "stop_worker", time.time(), job_id, attempt, f"pid {pid} for {pause:g}s (job {job_id})"
        )

    def _kill_supervisor(self) -> Fault:
        host = self.random.randrange(len(self.hosts))
        old = self.hosts[host]
        assert old is not None
        old.signal(signal.SIGKILL)
        old.wait()
        self._start_daemon(host)
        new = self.hosts[host]
        assert new is not None
        return Fault(
            "kill_supervisor",
            time.time(),
            detail=f"host-{host + 1}: pid {old.pid}; started {new.pid}",
        )

    def _restart_postgres(self) -> Fault:
        assert self.restart_postgres is not None
        started = time.time()
        self.restart_postgres()
        return Fault("restart_postgres", started, detail=f"down {time.time() - started:.2f}s")

    def _kill_http(self) -> Fault | None:
        daemon = self.random.choice(self._current())
        started = [
            e
            for e in daemon.log_events()
            if e.get("event") == "child started" and e.get("child") == "http-1"
        ]
        if not started or not alive(started[-1]["pid"]):
            return None
        pid = started[-1]["pid"]
        _signal(pid, signal.SIGKILL)
        return Fault("kill_http", time.time(), detail=f"pid {pid}")

    # -- the verdict -----------------------------------------------------------------------

    def _settle(self) -> bool:
        try:
            return wait_for(
                lambda: drained(self.direct_url),
                timeout=self.profile.settle_seconds,
                interval=0.5,
            )
        except TimeoutError:
            return False

    def _database_now(self) -> datetime:
        with open_connection(self.direct_url) as conn:
            row = conn.execute("select now()").fetchone()
        assert row is not None
        return cast(datetime, row[0])

    def _verdict(
        self, settled: bool, exit_codes: list[int], database: str, settled_at: datetime | None
    ) -> Report:
        # A periodic tick the daemons' schedulers enqueue while they stop, once the storm
        # has settled, is left pending by workers that no longer claim: not a lost job.
        evidence = Evidence.read(self.direct_url, settled_at)
        checks = [
            Check("the system settled: no job left pending, failed or in progress", settled),
            *self._submission_checks(evidence),
            *job_checks(evidence, {s.key: s.kind for s in self.submissions}, self.cancels),
            *limit_checks(evidence),
            *workflow_checks(evidence, expected=self.profile.workflow_every > 0),
            *clock_checks(
                evidence,
                {s.key for s in self.submissions if s.delay is not None},
                self.lease_samples,
                self.profile.lease_seconds,
            ),
            _check("every scenario of the profile ran", self.scripted),
            Check(
                "every supervisor still running exited 0 on SIGTERM",
                set(exit_codes) == {0},
                f"exit codes {exit_codes}",
            ),
        ]
        finishes_per_job = Counter(job_id for job_id, _, _ in evidence.finishes)
        logged = Counter(e.get("event", "") for d in self.daemons for e in d.log_events())
        return Report(
            seed=self.seed,
            profile=asdict(self.profile),
            database=database,
            jobs=dict(Counter(job.state for job in evidence.jobs.values())),
            executions=len(evidence.starts),
            duplicate_executions=sum(n - 1 for n in finishes_per_job.values() if n > 1),
            submissions=dict(Counter(f"{s.via} {s.outcome}" for s in self.submissions)),
            faults=dict(Counter(f.kind for f in self.faults)),
            recovery_seconds=self._recovery(evidence.starts),
            partitions=(
                self.cut_offs.figures(evidence.starts, self.traces) if self.cut_offs else []
            ),
            stale_writes_refused=sum(n for event, n in logged.items() if "lease lost" in event),
            attempts_fenced=sum(
                n for event, n in logged.items() if "running out by this worker's clock" in event
            ),
            clock_offsets={
                f"host-{host + 1}": offset
                for host, offset in enumerate(self.profile.clock_offsets)
                if host < len(self.hosts)
            },
            cancels=dict(Counter(c.answer for c in self.cancels)),
            checks=checks,
        )

    def _submission_checks(self, evidence: Evidence) -> list[Check]:
        stored = evidence.by_key

        def as_submitted(s: Submission) -> bool:
            job = stored.get(s.key)
            return job is not None and (job.task, job.payload) == (s.task, s.payload)

        accepted = [s for s in self.submissions if s.outcome == "accepted"]
        refused = [s for s in self.submissions if s.outcome in ("refused", "probe")]
        return [
            _check(
                "every accepted submission exists exactly once, as submitted",
                [
                    s.key
                    for s in accepted
                    if evidence.copies[s.key] != 1
                    or not as_submitted(s)
                    or stored[s.key].id != s.job_id
                ],
            ),
            _check(
                "refused submissions were stored whole or not at all",
                [
                    s.key
                    for s in refused
                    if evidence.copies[s.key] > 1 or (s.key in stored and not as_submitted(s))
                ],
            ),
            _check(
                "concurrent submissions with one key made one job",
                [
                    key
                    for key, ids in self.bursts
                    if evidence.copies[key] > 1 or len({i for i in ids if i is not None}) > 1
                ],
            ),
        ]

    def _recovery(self, starts: list[tuple[int, int, int, Any]]) -> dict[str, float | None]:
        """From each worker kill to its job's next start."""
        times = []
        for fault in self.faults:
            if fault.kind != "kill_worker":
                continue
            later = [
                at.timestamp()
                for job_id, attempt, _, at in starts
                if job_id == fault.job_id and attempt > (fault.attempt or 0)
            ]
            if later:
                times.append(min(later) - fault.at)
        if not times:
            return {"p50": None, "p99": None, "max": None}
        cuts = (
            statistics.quantiles(times, n=100, method="inclusive")
            if len(times) > 1
            else [times[0]] * 99
        )
        return {"p50": cuts[49], "p99": cuts[98], "max": max(times)}


class StoredJob(NamedTuple):
    id: int
    key: str | None
    task: str
    payload: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    result: Any
    lease_expired: bool | None
    due_after: float  # seconds from created_at to run_at
    lateness: float  # seconds from run_at to created_at: a periodic tick's
    failures: int  # failed attempts, each of which moved run_at to its retry
    cancel_requested: bool = False  # asked to cancel while it ran
    enqueued_after_settling: bool = False  # stored once no job was left to run


@dataclass
class Evidence:
    """What the database holds once the storm settled: jobs, and the tasks' own record."""

    jobs: dict[int, StoredJob]
    starts: list[tuple[int, int, int, Any]]  # job id, attempt, pid, time
    finishes: list[tuple[int, int, str]]  # job id, attempt, token
    # Attempts of limited tasks: (task, key), from their start to their recorded finish or
    # the release of their job, whichever came first (epoch seconds; end None: neither).
    limited: list[tuple[str, str, float, float | None]] = field(default_factory=list)
    # Jobs stored with parents: (id, state, every parent completed, epoch of its first
    # recorded start, epoch of its parents' last finish).
    dependents: list[tuple[int, str, bool, float | None, float | None]] = field(
        default_factory=list
    )

    @classmethod
    def read(cls, url: str, settled_at: datetime | None = None) -> Evidence:
        with open_connection(url) as conn:
            rows = conn.execute(
                "select id, idempotency_key, task, payload, state::text, attempts,"
                " max_attempts, result, lease_expires_at < now(),"
                " extract(epoch from run_at - created_at)::float8,"
                " extract(epoch from created_at - run_at)::float8,"
                " (select count(*) from jsonb_array_elements(errors) e"
                "  where not e ? 'worker')::int,"
                " cancel_requested_at is not null,"
                " coalesce(created_at > %s, false)"
                " from errands_jobs",
                (settled_at,),
            ).fetchall()
            starts = conn.execute("select job_id, attempt, pid, at from chaos_starts").fetchall()
            finishes = conn.execute("select job_id, attempt, token from chaos_finishes").fetchall()
            limited = conn.execute(LIMITED_ATTEMPTS).fetchall()
            dependents = conn.execute(DEPENDENT_JOBS).fetchall()
        return cls({row[0]: StoredJob(*row) for row in rows}, starts, finishes, limited, dependents)

    @cached_property
    def copies(self) -> Counter[str]:
        return Counter(job.key for job in self.jobs.values() if job.key is not None)

    @cached_property
    def by_key(self) -> dict[str, StoredJob]:
        return {job.key: job for job in self.jobs.values() if job.key is not None}


# An attempt held its slot from its claim until the statement that ended it; the recorded
# start and the earliest sign of its end lie within that: the task's recorded finish, the
# attempt's entry in the job's errors (a release or reap of an attempt killed, stopped or
# cut off, or a failure: a task whose finish could not be recorded while PostgreSQL
# restarted fails), or the job's finish when this was its last attempt.
LIMITED_ATTEMPTS = """
select job.task, coalesce(job.payload->>'key', ''), extract(epoch from s.at)::float8,
       extract(epoch from least(
           (select min(f.at) from chaos_finishes f
            where (f.job_id, f.attempt) = (s.job_id, s.attempt)),
           (select min((e->>'at')::timestamptz) from jsonb_array_elements(job.errors) e
            where (e->>'attempt')::int = s.attempt),
           case when job.attempts = s.attempt then job.finished_at end))::float8
from chaos_starts s join errands_jobs job on job.id = s.job_id
where job.task in ('chaos.limited', 'chaos.keyed')
"""


DEPENDENT_JOBS = """
select c.id, c.state::text,
       (select bool_and(p.state = 'completed') from errands_jobs p where p.id = any(c.parents)),
       (select extract(epoch from min(s.at))::float8 from chaos_starts s where s.job_id = c.id),
       (select extract(epoch from max(p.finished_at))::float8 from errands_jobs p
        where p.id = any(c.parents))
from errands_jobs c where c.parents is not null
"""


def workflow_checks(evidence: Evidence, expected: bool) -> list[Check]:
    """Every job stored with parents completed, and none started before all its parents had
    completed: the hand-over held through every fault."""
    if not expected and not evidence.dependents:
        return []
    wrong = [
        f"{job_id} {state}, parents completed: {parents_completed}, started {early} < {done}"
        for job_id, state, parents_completed, early, done in evidence.dependents
        if state != "completed"
        or not parents_completed
        or (early is not None and done is not None and early < done)
    ]
    return [
        _check(
            "every job of a workflow completed, none started before its parents completed "
            f"({len(evidence.dependents)} jobs with parents)",
            wrong if evidence.dependents else ["no workflow was stored"],
        )
    ]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (one ending as another starts: not together)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, step in events:
        open_now += step
        most = max(most, open_now)
    return most


def limit_checks(evidence: Evidence) -> list[Check]:
    """The limited tasks' attempts never held more slots at once than their limits allow."""
    by_key: dict[tuple[str, str], list[tuple[float, float]]] = {}
    unended = []
    for task, key, start, end in evidence.limited:
        if end is None:
            unended.append((task, key, start))
        else:
            by_key.setdefault((task, key), []).append((start, end))
    allowed = {"chaos.limited": LIMITED_AT_ONCE, "chaos.keyed": KEYED_AT_ONCE}
    over = [
        (task, key, most_at_once(spans), allowed[task])
        for (task, key), spans in sorted(by_key.items())
        if most_at_once(spans) > allowed[task]
    ]
    ran = sum(len(spans) for spans in by_key.values())
    return [
        _check(
            f"limited attempts never ran more at once than allowed ({LIMITED_AT_ONCE} of "
            f"chaos.limited across hosts, {KEYED_AT_ONCE} of chaos.keyed per key; {ran} attempts)",
            over + unended,
        )
    ]


def fair_targets(
    running: list[tuple[int, int, int]], workers: set[int]
) -> list[tuple[int, int, int]]:
    """The (pid, job id, attempt) entries of `workers` a worker fault may aim at.

    A worker running a job that has already lost half its budget is spared. Often a
    slow job is the only one in progress, so aim alone would end attempt after attempt
    of it until its budget ran out, and the verdict would judge the aim, not errands.
    Faults that hit every worker at once (a supervisor's death, a restart of
    PostgreSQL) still reach it.
    """
    worn = {pid for pid, _, attempt in running if attempt >= SPARED_FROM_ATTEMPT}
    return [entry for entry in running if entry[0] in workers - worn]


def job_checks(
    evidence: Evidence, kinds: dict[str, str], cancels: Sequence[CancelRequest] = ()
) -> list[Check]:
    started = {job_id for job_id, _, _, _ in evidence.starts}
    tokens = set(evidence.finishes)
    # Recorded requests (and those the database holds) must end cancelled; one a fault cut
    # off may have been recorded or not.
    asked = {c.job_id for c in cancels if c.answer in ("in_progress", "cancelled")}
    asked |= {job.id for job in evidence.jobs.values() if job.cancel_requested}
    maybe = {c.job_id for c in cancels if c.answer == "unclear"}

    def settled_as_it_should(job: StoredJob) -> bool:
        if job.enqueued_after_settling and job.state == "pending":
            return True
        if job.id in asked:
            return job.state == "cancelled"
        if job.id in maybe and job.state == "cancelled":
            return True
        if kinds.get(job.key or "") == "doomed":
            return job.state == "dead" and job.attempts == job.max_attempts
        return job.state == "completed"

    def from_last_attempt(job: StoredJob) -> bool:
        result = job.result
        return (
            result["attempt"] == job.attempts
            and (job.id, result["attempt"], result["token"]) in tokens
        )

    completed = [job for job in evidence.jobs.values() if job.state == "completed"]
    return [
        _check(
            "every job completed, or is dead with its budget spent when it always fails",
            [
                f"{job.id} {job.task} {job.state} after {job.attempts}/{job.max_attempts} attempts"
                for job in evidence.jobs.values()
                if not settled_as_it_should(job)
            ],
        ),
        _check(
            "every completed job ran at least once",
            [j.id for j in completed if j.id not in started],
        ),
        _check(
            "every stored result came from the job's last attempt (fencing)",
            [job.id for job in completed if not from_last_attempt(job)],
        ),
        _check(
            "nothing stays in progress past its lease",
            [j.id for j in evidence.jobs.values() if j.state == "in_progress" and j.lease_expired],
        ),
        _check(
            "no job asked to cancel while it ran started again",
            sorted(
                {
                    (job_id, attempt)
                    for c in cancels
                    if c.answer == "in_progress" and c.attempt is not None
                    for job_id, attempt, _, _ in evidence.starts
                    if job_id == c.job_id and attempt > c.attempt
                }
            ),
        ),
    ]


def clock_checks(
    evidence: Evidence,
    delayed: set[str],
    lease_samples: list[tuple[float, float]],
    lease_seconds: float,
) -> list[Check]:
    """Leases, delays and periodic ticks by PostgreSQL's clock, whatever the hosts' clocks say.

    A host whose own clock set any of them would be off by its clock's error (the
    profile's clock_offsets: half an hour), which no fault here comes near. A failed
    attempt moves run_at to its retry, so only jobs that never failed tell.
    """
    unmoved = [j for j in evidence.jobs.values() if not j.failures]
    ticks = [j for j in unmoved if (j.key or "").startswith("periodic:chaos.tick:")]
    return [
        _check(
            "every lease seen in progress ended at most one lease after PostgreSQL's now, "
            f"and no more than {TICK_LATENESS_SECONDS:g}s before it",
            [
                (round(low, 3), round(high, 3))
                for low, high in lease_samples
                if high > lease_seconds + 0.5 or low < -TICK_LATENESS_SECONDS
            ],
        ),
        _check(
            f"delayed jobs were due {DELAY_SECONDS:g}s after PostgreSQL's now when stored",
            [
                (j.id, round(j.due_after, 3))
                for j in unmoved
                if j.key in delayed and abs(j.due_after - DELAY_SECONDS) > 0.01
            ],
        ),
        _check(
            "periodic ticks were enqueued by PostgreSQL's clock: each after its tick, "
            f"within {TICK_LATENESS_SECONDS:g}s",
            [
                (j.key, round(j.lateness, 3))
                for j in ticks
                if not 0 <= j.lateness <= TICK_LATENESS_SECONDS
            ]
            or ([] if ticks else ["no tick was enqueued"]),
        ),
    ]


def _check(name: str, violations: list[Any]) -> Check:
    return Check(name, not violations, _some(violations))


class _Refused(Exception):
    """The API answered, and not with success."""


def _enqueue(client: Client, s: Submission, max_attempts: int) -> int:
    return client.enqueue(
        s.task, s.payload, idempotency_key=s.key, max_attempts=max_attempts, delay=s.delay
    ).id


def _cancel_by_client(client: Client, job_id: int) -> tuple[str, int | None]:
    try:
        job = client.cancel(job_id)
    except InvalidState:
        return "refused", None
    return job.state.value, job.attempts


def _cancel_by_http(http: httpx.Client, url: str) -> tuple[str, int | None]:
    response = http.post(url)
    if response.status_code == 409:
        return "refused", None
    if response.status_code != 200:
        raise _Refused(f"{response.status_code} {response.text[:100]}")
    job = response.json()
    return str(job["state"]), int(job["attempts"])


def _post(http: httpx.Client, body: dict[str, Any], key: str) -> int:
    response = http.post("/jobs", json=body, headers={"Idempotency-Key": key})
    if response.status_code not in (200, 201):
        raise _Refused(f"{response.status_code} {response.text[:100]}")
    return int(response.json()["id"])


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _some(items: list[Any]) -> str:
    return "" if not items else f"{len(items)}: {items[:10]}"


def shell_restart(command: str) -> Callable[[], None]:
    def restart() -> None:
        subprocess.run(command, shell=True, check=True)

    return restart
