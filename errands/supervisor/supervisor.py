"""The supervisor: forks the children, restarts the dead, recovers their jobs, reaps leases.

Its children: the workers, the HTTP child (unless --no-http) and the scheduler,
which enqueues periodic jobs. Task modules are imported only in children.

It is single-threaded and sleeps in one select() on a wake-up pipe (signals,
including SIGCHLD, write to it) and the children's status pipes, with a
timeout for the next reaper run, restart or shutdown deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import secrets
import select
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

from errands.database import LazyConnection, statement_deadline
from errands.log import get_logger
from errands.metrics import MULTIPROC_ENV, enable_multiprocess, metrics, process_exited
from errands.queue.jobs import JobState
from errands.queue.lease import Recovered, reap, release
from errands.queue.presence import forget, gone_workers, worker_id
from errands.supervisor.board import WorkerBoard
from errands.supervisor.children import EXIT_STARTUP, Child, Slot, describe_exit, fork_child
from errands.workers.scheduler import EXIT_NOTHING_TO_SCHEDULE, SchedulerOptions, run_scheduler
from errands.workers.worker import EXIT_REPLACE, WorkerOptions, run_worker

QUICK_DEATH_SECONDS = 10.0  # a child dying sooner than this counts towards a crash loop
MAX_RESTART_DELAY = 30.0
# A supervisor killed on this machine leaves workers that exit within ORPHAN_CHECK_SECONDS:
# for this long after start, a new one looks for them every LOCAL_WATCH_INTERVAL.
LOCAL_WATCH_SECONDS = 3.0
LOCAL_WATCH_INTERVAL = 0.05

_log = get_logger("errands.supervisor")


@dataclass(frozen=True)
class SupervisorOptions:
    worker: WorkerOptions  # template; each child gets its own worker_id and parent_pid
    workers: int = 2
    grace_seconds: float = 20.0
    reaper_seconds: float = 5.0
    # The HTTP child (unless --no-http), given a function that tells whether a worker runs.
    http_main: Callable[[Callable[[], str | None]], int] | None = None
    # Its listening socket, bound before any child is forked; closed in worker children.
    http_socket: socket.socket | None = None
    scheduler: bool = True  # the child that enqueues periodic jobs' ticks
    hostname: str = field(default_factory=socket.gethostname)  # in the workers' ids


class Supervisor:
    def __init__(self, options: SupervisorOptions) -> None:
        self.options = options
        self._url = options.worker.url
        self._slots = [Slot("worker", n) for n in range(1, options.workers + 1)]
        self._board = WorkerBoard(options.workers)
        if options.http_main is not None:
            self._slots.append(Slot("http", 1))
        if options.scheduler:
            self._slots.append(Slot("scheduler", 1))
        self._children: dict[int, Child] = {}
        self._signals: list[int] = []
        self._unreleased: list[str] = []  # worker ids whose jobs still wait to be released
        self._told: set[str] = set()  # why children failed, told with a traceback already
        # A statement on a peer that stopped answering must not stall restarts and signals:
        # cut past the deadline, and no new connection tried for as long.
        self._deadline = statement_deadline(options.worker.lease_seconds)
        self._db = LazyConnection(
            self._url,
            lease_seconds=options.worker.lease_seconds,
            pgbouncer=not options.worker.listen,
            quiet_after_failure=self._deadline,
        )
        self._wake_r, self._wake_w = os.pipe()
        self._stop_deadline: float | None = None
        self._killed = False  # the children left at the end of the grace were sent SIGKILL
        self._next_reap = 0.0
        self._watch_local_until = 0.0
        self._database_lost_at: float | None = None  # monotonic, while unavailable

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        given = os.environ.get(MULTIPROC_ENV)
        metrics_dir = Path(given or tempfile.mkdtemp(prefix="errands-metrics-"))
        enable_multiprocess(metrics_dir)
        try:
            return self._run()
        finally:
            if not given:
                shutil.rmtree(metrics_dir, ignore_errors=True)

    def _run(self) -> int:
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)
        _log.info(
            "supervisor starting",
            pid=os.getpid(),
            workers=self.options.workers,
            concurrency=self.options.worker.concurrency,
            http=self.options.http_main is not None,
            grace_seconds=self.options.grace_seconds,
        )
        self._db.get_retrying(give_up=lambda: bool(self._signals))
        self._watch_local_until = time.monotonic() + LOCAL_WATCH_SECONDS
        while True:
            self._handle_signals()
            self._reap_children()
            if self._stop_deadline is not None and not self._children:
                break
            # Release first: a crashed predecessor's jobs go back to the queue before
            # forking the children that will claim them.
            self._find_gone_local_workers()
            self._release_unreleased()
            self._start_due_children()
            self._run_reaper_when_due()
            self._enforce_grace()
            self._sleep()
        self._release_unreleased()
        if self._unreleased:
            _log.error(
                "could not release the jobs of exited workers; the reaper recovers them "
                "when their leases expire",
                workers=self._unreleased,
            )
        self._db.close()
        _log.info("supervisor stopped")
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum == signal.SIGCHLD:
                continue
            name = signal.Signals(signum).name
            if self._stop_deadline is None:
                self._stop_deadline = time.monotonic() + self.options.grace_seconds
                _log.info(
                    "shutdown requested: no new jobs; running jobs get the grace period",
                    signal=name,
                    grace_seconds=self.options.grace_seconds,
                )
                self._signal_children(signal.SIGTERM)
            else:
                _log.warning("second signal: skipping the grace period", signal=name)
                self._stop_deadline = time.monotonic()

    def _enforce_grace(self) -> None:
        """Past the grace, kill what still runs: once; the loop then waits for SIGCHLD."""
        if self._killed or self._stop_deadline is None or time.monotonic() < self._stop_deadline:
            return
        if self._children:
            _log.warning(
                "grace period over: killing children still running; their jobs return to pending",
                children=[c.slot.name for c in self._children.values()],
            )
            self._signal_children(signal.SIGKILL)
            self._killed = True

    def _signal_children(self, signum: int) -> None:
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    # -- children --------------------------------------------------------------------------

    def _start_due_children(self) -> None:
        if self._stop_deadline is not None:
            return
        occupied = {child.slot.name for child in self._children.values()}
        now = time.monotonic()
        for slot in self._slots:
            if slot.name not in occupied and slot.start_after <= now:
                self._start(slot)

    def _start(self, slot: Slot) -> None:
        fds = [self._wake_r, self._wake_w, *(c.status_fd for c in self._children.values())]
        if slot.kind != "http" and self.options.http_socket is not None:
            fds.append(self.options.http_socket.fileno())  # only the HTTP child keeps the port
        if slot.kind == "http":
            assert self.options.http_main is not None
            child = fork_child(slot, partial(self.options.http_main, self._board.not_ready), fds)
        elif slot.kind == "scheduler":
            scheduler = SchedulerOptions(
                self._url,
                self.options.worker.task_modules,
                pgbouncer=not self.options.worker.listen,
            )
            child = fork_child(slot, partial(run_scheduler, scheduler), fds)
        else:
            token = secrets.token_hex(3)

            def worker_main() -> int:
                own_id = worker_id(self.options.hostname, os.getpid(), token)
                options = dataclasses.replace(
                    self.options.worker,
                    worker_id=own_id,
                    on_started=partial(self._board.set, slot.number, True),
                )
                return run_worker(options)

            child = fork_child(slot, worker_main, fds)
            child.worker_id = worker_id(self.options.hostname, child.pid, token)
        self._children[child.pid] = child
        _log.info("child started", child=slot.name, pid=child.pid, worker=child.worker_id)

    def _reap_children(self) -> None:
        for child in self._children.values():
            child.read_status()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self._children:
                self._on_child_exit(self._children.pop(pid), status)

    def _on_child_exit(self, child: Child, status: int) -> None:
        child.close()
        process_exited(child.pid)
        if child.worker_id is not None:
            self._board.set(child.slot.number, False)
            self._unreleased.append(child.worker_id)
            self._release_unreleased()
        lived = time.monotonic() - child.started
        code = os.waitstatus_to_exitcode(status)
        fields: dict[str, Any] = {
            "child": child.slot.name,
            "pid": child.pid,
            "how": describe_exit(status),
            "lived_seconds": round(lived, 2),
        }
        if child.reason:
            fields["reason"] = child.reason
        if child.traceback and child.reason not in self._told:
            # Once per crash loop: every worker fails the same way when a task module is broken.
            fields["traceback"] = child.traceback
            self._told.add(child.reason)
        if self._stop_deadline is not None:
            _log.info("child exited", **fields)
            return
        slot = child.slot
        if code == EXIT_NOTHING_TO_SCHEDULE:
            self._slots.remove(slot)
            _log.info("no periodic schedules declared: the scheduler is not needed", **fields)
            return
        if code == EXIT_REPLACE:
            slot.crashes, delay = 0, 0.0
        elif code == EXIT_STARTUP or lived < QUICK_DEATH_SECONDS:
            slot.crashes += 1
            delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** (slot.crashes - 1))
        else:
            slot.crashes, delay = 0, 0.0
            self._told.clear()  # the loop, if there was one, is over
        slot.start_after = time.monotonic() + delay
        metrics().worker_restarts.inc()
        log = _log.info if code == EXIT_REPLACE else _log.error
        log("child exited; restarting", restart_in_seconds=delay, crash_loop=slot.crashes, **fields)

    # -- the database ----------------------------------------------------------------------

    def _release_unreleased(self) -> None:
        while self._unreleased:
            worker_id = self._unreleased[0]
            try:
                with self._db.within(self._deadline) as conn:
                    recovered = release(conn, worker_id)
                    forget(conn, worker_id)
            except psycopg.OperationalError as exc:
                self._lost_database(exc)
                return
            self._reached_database()
            self._unreleased.pop(0)
            _log_recovered(recovered, "released the jobs of an exited worker", worker_id)
            metrics().jobs_recovered.labels("worker_exited").inc(len(recovered))

    def _find_gone_local_workers(self) -> None:
        """Queue for release the jobs of workers of this machine whose process is gone.

        They belonged to a supervisor killed here (its workers exit soon after it):
        released now rather than when their leases expire. Workers elsewhere, or
        whose fate is uncertain, are left to the reaper.
        """
        if time.monotonic() > self._watch_local_until:
            return
        try:
            with self._db.within(self._deadline) as conn:
                gone = gone_workers(conn, self.options.hostname)
        except psycopg.OperationalError as exc:
            self._lost_database(exc)
            return
        self._reached_database()
        self._unreleased += [w for w in gone if w not in self._unreleased]

    def _run_reaper_when_due(self) -> None:
        now = time.monotonic()
        if now < self._next_reap:
            return
        self._next_reap = now + self.options.reaper_seconds
        try:
            with self._db.within(self._deadline) as conn:
                recovered = reap(conn)
        except psycopg.OperationalError as exc:
            self._lost_database(exc)
            return
        self._reached_database()
        _log_recovered(recovered or [], "reaper recovered jobs whose lease expired", None)
        metrics().jobs_recovered.labels("lease_expired").inc(len(recovered or []))

    def _lost_database(self, exc: Exception) -> None:
        """Said once per outage; the work waits, and is tried again at most every deadline."""
        self._db.drop()
        if self._database_lost_at is None:
            self._database_lost_at = time.monotonic()
            _log.warning(
                "database unavailable; releases and reaping wait for it", error=str(exc).strip()
            )

    def _reached_database(self) -> None:
        if self._database_lost_at is not None:
            lost_for = time.monotonic() - self._database_lost_at
            _log.info("database available again", after_seconds=round(lost_for, 2))
            self._database_lost_at = None

    # -- sleeping --------------------------------------------------------------------------

    def _sleep(self) -> None:
        now = time.monotonic()
        wake_at = [self._next_reap]
        if self._stop_deadline is None:
            wake_at += [s.start_after for s in self._slots if s.start_after > now]
        elif not self._killed:  # once killed, SIGCHLD wakes us
            wake_at.append(self._stop_deadline if self._children else now)
        if self._unreleased:
            wake_at.append(now + 1.0)
        if now < self._watch_local_until:
            wake_at.append(now + LOCAL_WATCH_INTERVAL)
        timeout = max(0.0, min(wake_at) - now)
        fds = [self._wake_r, *(c.status_fd for c in self._children.values())]
        try:
            select.select(fds, [], [], timeout)
        except OSError as exc:  # a status pipe closed under us: the next reap tidies up
            if exc.errno != errno.EBADF:
                raise
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass


def _log_recovered(recovered: list[Recovered], message: str, worker_id: str | None) -> None:
    for job in recovered:
        _log.warning(
            message,
            job_id=job.id,
            task=job.task,
            attempt=job.attempts,
            worker=worker_id,
            state=job.state.value,
        )
        if job.state is JobState.CANCELLED:  # asked to cancel while it ran: never run again
            metrics().cancels_honoured.labels(job.queue, job.task).inc()
