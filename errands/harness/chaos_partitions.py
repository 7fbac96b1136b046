"""The chaos suite's faults that close nothing, and the figures they are judged by.

Every host's processes reach PostgreSQL through one PartitionProxy
(partition.py); a fault freezes the connections of one process for
`partition_seconds` and heals them, or SIGSTOPs PostgreSQL for as long:

* partition_worker: a worker running a slow job (thread or coroutine);
* partition_supervisor: a supervisor, whose worker running a job is then SIGKILLed,
  so that it has jobs to release and cannot;
* partition_api: an HTTP process, while submissions go on;
* hang_postgres: every process of the server (the embedded database only).

Each fault's figures, in seconds from the cut (the stop): until its job ran
again elsewhere (the tasks' own start records, PostgreSQL's clock), until the
cut-off attempt stopped (the last line of its trace file, the monotonic clock),
and from the heal until the process did its work again.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from errands.database import open_connection
from errands.harness.chaos_tasks import SPARED_FROM_ATTEMPT
from errands.harness.partition import PartitionProxy, resume_postgres, stop_postgres
from errands.harness.process import DaemonProcess, alive
from errands.harness.waiting import wait_for

KINDS = ("partition_worker", "partition_supervisor", "partition_api", "hang_postgres")
SLOW_TASKS = ("chaos.slow", "chaos.slow_async")


@dataclass
class Cut:
    """One fault that closed nothing: when it began and ended, on both clocks, and its aim."""

    kind: str
    detail: str
    at: float  # wall-clock time of the cut (or SIGSTOP)
    mono: float  # the same moment, monotonic
    healed_at: float = 0.0
    healed_mono: float = 0.0
    pid: int | None = None  # the process cut off
    attempts: list[tuple[int, int]] = field(default_factory=list)  # (job, attempt) cut off
    live: dict[str, float | None] = field(default_factory=dict)  # measured while it ran


class CutOffs:
    """Injects the faults of KINDS for a chaos run; `figures` judges them afterwards."""

    def __init__(
        self,
        *,
        proxy: PartitionProxy,
        direct_url: str,
        hosts: Callable[[], list[DaemonProcess]],
        api_base: Callable[[int], str],
        seconds: float,
        pgdata: Path | None,
        pick: Callable[[list[Any]], Any],
        record_probe: Callable[[str], None],
    ) -> None:
        self.proxy = proxy
        self.direct_url = direct_url
        self.hosts = hosts
        self.api_base = api_base
        self.seconds = seconds
        self.pgdata = pgdata
        self.pick = pick
        self.record_probe = record_probe  # the key of a job a probe may have stored
        self.cuts: list[Cut] = []
        self.stopped_postgres: list[int] = []
        self._probes = 0

    # -- the faults ------------------------------------------------------------------------

    def partition_worker(self) -> Cut | None:
        mine = {pid for daemon in self.hosts() for pid in daemon.children()}
        running = [t for t in self._running(None) if t[0] in mine]
        # Thread and coroutine jobs in turn. A thread job's process is replaced; a worker
        # running coroutines alone is not, and must claim again once healed.
        done = sum(1 for cut in self.cuts if cut.kind == "partition_worker")
        wanted = SLOW_TASKS[done % 2]
        others = {pid for pid, _, _, task in running if task != wanted}
        targets = [
            (pid, job, attempt, task)
            for pid, job, attempt, task in running
            if task == wanted
            and attempt < SPARED_FROM_ATTEMPT
            and (wanted == "chaos.slow" or pid not in others)
        ]
        if not targets:
            return None
        pid, job, attempt, task = self.pick(targets)
        on_thread = not task.endswith("_async")
        kind = "thread" if on_thread else "coroutine"
        detail = f"pid {pid}, job {job} ({kind})"
        with self._cut(pid, "partition_worker", detail) as cut:
            cut.attempts = [(job, attempt)]
            if on_thread:  # replaced: a thread cannot be stopped
                cut.live["the cut-off process exited after"] = self._until(
                    lambda: not alive(pid), cut, within=self.seconds
                )
            self._sleep_until(cut.mono + self.seconds)
        return cut

    def partition_supervisor(self) -> Cut | None:
        daemons = self.hosts()
        host = self.pick(list(range(len(daemons))))
        daemon = daemons[host]
        children = set(daemon.children())
        busy = [
            (p, j, a)
            for p, j, a, _ in self._running(None)
            if p in children and a < SPARED_FROM_ATTEMPT
        ]
        if not busy:
            return None
        worker, job, attempt = self.pick(busy)
        detail = (
            f"host-{host + 1}: pid {daemon.pid}; its worker {worker} SIGKILLed running job {job}"
        )
        with self._cut(daemon.pid, "partition_supervisor", detail) as cut:
            cut.attempts = [(job, attempt)]
            os.kill(worker, signal.SIGKILL)
            restarted = self._until(
                lambda: set(daemon.children()) - children - {worker}, cut, within=self.seconds
            )
            cut.live["a new worker replaced the killed one after"] = restarted
            self._sleep_until(cut.mono + self.seconds)
        cut.live["its release done after heal"] = self._until(
            lambda: not _worker_recorded(self.direct_url, worker), cut, after_heal=True
        )
        return cut

    def partition_api(self) -> Cut | None:
        daemons = self.hosts()
        host = self.pick(list(range(len(daemons))))
        pid = _http_child(daemons[host])
        if pid is None:
            return None
        base = self.api_base(host)
        self._probes += 1
        key = f"api-probe-{self._probes}"
        self.record_probe(key)
        with self._cut(pid, "partition_api", f"host-{host + 1}: HTTP pid {pid}") as cut:
            started = time.monotonic()
            answer = _post(base, key, timeout=self.seconds / 2)
            cut.live["a submission sent during the cut was answered after"] = (
                time.monotonic() - started if answer else None
            )
            self._sleep_until(cut.mono + self.seconds)
        cut.live["answering submissions after heal"] = self._until(
            lambda: _post(base, key, timeout=1.0), cut, after_heal=True
        )
        return cut

    def hang_postgres(self) -> Cut | None:
        if self.pgdata is None:
            return None
        running = [(job, attempt) for _, job, attempt, _ in self._running(SLOW_TASKS)]
        now, mono = time.time(), time.monotonic()
        self.stopped_postgres = stop_postgres(self.pgdata)
        detail = f"SIGSTOP for {self.seconds:g}s; {len(running)} slow attempts running"
        cut = Cut("hang_postgres", detail, now, mono)
        cut.attempts = running
        try:
            self._sleep_until(mono + self.seconds)
        finally:
            self.resume()
            cut.healed_at, cut.healed_mono = time.time(), time.monotonic()
        self.cuts.append(cut)
        return cut

    def resume(self) -> None:
        """SIGCONT a PostgreSQL this left stopped (also when the run ends in an error)."""
        stopped, self.stopped_postgres = self.stopped_postgres, []
        resume_postgres(stopped)

    # -- the figures -----------------------------------------------------------------------

    def figures(
        self, starts: list[tuple[int, int, int, Any]], traces: Path
    ) -> list[dict[str, Any]]:
        """Each cut's figures, from the tasks' start records (job, attempt, pid, at) and the
        trace files of the attempts."""
        return [
            {
                "kind": cut.kind,
                "detail": cut.detail,
                "seconds": {**self._judged(cut, starts, traces), **cut.live},
            }
            for cut in self.cuts
        ]

    def _judged(
        self, cut: Cut, starts: list[tuple[int, int, int, Any]], traces: Path
    ) -> dict[str, float | None]:
        if cut.kind == "partition_api":
            return {}
        few = "" if len(cut.attempts) == 1 else "s (the last)"
        elsewhere = [_first_start_after(starts, job, attempt) for job, attempt in cut.attempts]
        figures: dict[str, float | None] = {
            f"the job{few} ran again after": _latest(t - cut.at for t in elsewhere if t)
        }
        if cut.kind == "partition_supervisor":
            return figures
        stopped = [_last_trace(traces, job, attempt) for job, attempt in cut.attempts]
        figures[f"the cut-off attempt{few} stopped after"] = _latest(
            t - cut.mono for t in stopped if t is not None
        )
        resumed = [at.timestamp() for _, _, pid, at in starts if at.timestamp() > cut.healed_at]
        if cut.kind == "partition_worker":
            mine = [at.timestamp() for _, _, pid, at in starts if pid == cut.pid]
            resumed = [t for t in mine if t > cut.healed_at]
        figures["work resumed after heal"] = min(resumed) - cut.healed_at if resumed else None
        return figures

    # -- helpers ---------------------------------------------------------------------------

    @contextmanager
    def _cut(self, pid: int, kind: str, detail: str) -> Iterator[Cut]:
        cut = Cut(kind, detail, time.time(), time.monotonic(), pid=pid)
        self.proxy.freeze(pid)
        try:
            yield cut
        finally:
            self.proxy.heal(pid)
            cut.healed_at, cut.healed_mono = time.time(), time.monotonic()
            self.cuts.append(cut)

    def _running(self, tasks: tuple[str, ...] | None) -> list[tuple[int, int, int, str]]:
        """(worker pid, job, attempt, task) of the jobs in progress, of `tasks` if given."""
        try:
            with open_connection(self.direct_url, connect_timeout=2) as conn:
                rows = conn.execute(
                    "select lease_owner, id, attempts, task from errands_jobs"
                    " where state = 'in_progress' and (%s::text[] is null or task = any(%s))",
                    (list(tasks) if tasks else None,) * 2,
                ).fetchall()
        except psycopg.Error:
            return []
        return [
            (int(owner.split(":")[1]), job, attempt, task) for owner, job, attempt, task in rows
        ]

    @staticmethod
    def _sleep_until(moment: float) -> None:
        time.sleep(max(0.0, moment - time.monotonic()))

    @staticmethod
    def _until(
        done: Callable[[], object], cut: Cut, *, after_heal: bool = False, within: float = 15.0
    ) -> float | None:
        """Seconds from the cut (or the heal) until `done()`; None if not `within` seconds."""
        since = cut.healed_mono if after_heal else cut.mono
        try:
            wait_for(done, timeout=within, interval=0.02)
        except TimeoutError:
            return None
        return time.monotonic() - since


def _first_start_after(
    starts: list[tuple[int, int, int, Any]], job: int, attempt: int
) -> float | None:
    later = [at.timestamp() for j, a, _, at in starts if j == job and a > attempt]
    return min(later) if later else None


def _last_trace(traces: Path, job: int, attempt: int) -> float | None:
    try:
        lines = (traces / f"{job}-{attempt}").read_text().split()
    except OSError:
        return None
    return float(lines[-1]) if lines else None


def _latest(values: Iterator[float]) -> float | None:
    """The worst of the figures, if any."""
    return max(values, default=None)


def _worker_recorded(url: str, pid: int) -> bool:
    try:
        with open_connection(url, connect_timeout=2) as conn:
            row = conn.execute(
                "select count(*) from errands_workers where pid = %s", (pid,)
            ).fetchone()
    except psycopg.Error:
        return True
    return bool(row and row[0])


def _http_child(daemon: DaemonProcess) -> int | None:
    started = [
        e
        for e in daemon.log_events()
        if e.get("event") == "child started" and e.get("child") == "http-1"
    ]
    return started[-1]["pid"] if started and alive(started[-1]["pid"]) else None


def _post(base: str, key: str, timeout: float) -> bool:
    """Whether the API at `base` stored (or replayed) the probe job within `timeout`."""
    body = {"task": "chaos.quick", "max_attempts": 10}
    try:
        response = httpx.post(
            f"{base}/jobs", json=body, headers={"Idempotency-Key": key}, timeout=timeout
        )
    except httpx.HTTPError:
        return False
    return response.status_code in (200, 201)
