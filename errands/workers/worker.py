"""The worker process: claim jobs, run them on threads or coroutines, acknowledge them (fenced).

One loop on the main thread owns the database connection for claims and
acknowledgements and LISTENs on it; job threads, and the coroutines of `async
def` tasks on the worker's event loop (coroutines.py), report back through a
queue and a wake-up pipe; the lease keeper (keeper.py) renews leases on a connection
of its own. What finished attempts owe the database, and when it is sent (with
the next claim, so a job costs about one round trip), is acks.py's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import psycopg
import structlog

from errands.backoff import Backoff
from errands.client import Client, set_default_client
from errands.database import LazyConnection
from errands.log import get_logger
from errands.metrics import metrics
from errands.queue.jobs import Job
from errands.queue.lease import AsyncSlots
from errands.queue.presence import announce
from errands.queue.throttles import declare_task_limits
from errands.registry import registered, registered_tasks
from errands.workers.acks import AckMode, Acknowledgements, ClaimRequest
from errands.workers.attempt import WorkerAttempt
from errands.workers.coroutines import EventLoopThread
from errands.workers.execution import (
    Failed,
    Outcome,
    cancelled,
    execute,
    execute_async,
    is_async,
)
from errands.workers.fence import LeaseFence
from errands.workers.keeper import LeaseKeeper
from errands.workers.loading import load_task_modules
from errands.workers.running import Entry, RunningJobs, log_fields

EXIT_OK = 0
# Jobs a worker process runs at once, on threads (`--concurrency`). Several slots let one
# claim and one acknowledgement carry several jobs, and a slot is taken only when free,
# so no job waits behind a slow one while another could run it (bench/RESULTS.md).
DEFAULT_CONCURRENCY = 32
EXIT_REPLACE = 4  # a job past its timeout or its lease is stuck on a thread: start afresh
# A coroutine is cancelled at its timeout; one that ignores the cancellation (or blocks
# the event loop) is failed by the lease keeper this much later, and the worker replaced.
ASYNC_CANCEL_GRACE_SECONDS = 5.0
# A worker that must stop a thread job exits this long after deciding to, whatever its loop does.
ABANDON_SECONDS = 0.5
CHANNEL = "errands_jobs"
# The longest a freed thread slot waits for others to free before a claim fills it alone.
CLAIM_GATHER_SECONDS = 0.002
# The shortest sleep before a claim a limit sent back to recheck (see lease.Claimed).
RECHECK_FLOOR_SECONDS = 0.001

_log = get_logger("errands.worker")


@dataclass(frozen=True)
class WorkerOptions:
    url: str
    worker_id: str
    task_modules: Sequence[str] = ()
    queues: Sequence[str] = ()  # empty: "default" and every queue a registered task names
    concurrency: int = DEFAULT_CONCURRENCY  # thread slots
    async_concurrency: int = 100  # coroutine slots, used when an `async def` task is registered
    prefetch: int = 0  # jobs claimed beyond the free slots, held (leased) until a slot frees
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    backoff: Backoff = field(default_factory=Backoff)
    ack: AckMode = "batched"
    # LISTEN for wake-ups. Off behind a transaction pooler, where it is useless, and so
    # are server-side prepared statements: they are turned off with it.
    listen: bool = True
    on_started: Callable[[], None] | None = None  # called once tasks are loaded and claims begin


class Worker:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.running = RunningJobs()
        self._outcomes: queue.SimpleQueue[tuple[Entry, Outcome, bool]] = queue.SimpleQueue()
        self._acks = Acknowledgements(
            worker_id=options.worker_id,
            mode=options.ack,
            retry_delay=self.retry_delay,
            on_lost=self._report_lost,
        )
        self._ready: deque[Entry] = deque()  # claimed, waiting for a free slot
        self._executing = 0  # on threads
        self._executing_async = 0  # coroutines on the event loop
        self._async_slots = 0  # async_concurrency once an async task is registered
        self._async_tasks: list[str] = []  # the registered `async def` tasks' names
        self._async_names: frozenset[str] = frozenset()  # the same, to ask of every job
        self._slot_freed_at: float | None = None  # since when a claim has been gathering slots
        # The last claim took fewer jobs than it asked for: every due job it may take is taken.
        self._found_all = False
        self._events = EventLoopThread()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # An outcome woke the loop, which has not collected outcomes since: the outcomes that
        # follow need no wake-up of their own (a write to the pipe per job, otherwise).
        self._outcomes_signalled = False
        self._stopping = False
        self._replacing = False
        # A thread job's lease passed: exit now, whatever is owed (see _fenced).
        self._abandoning = False
        self._abandon_lock = threading.Lock()
        self._exit_timer = threading.Timer(ABANDON_SECONDS, self._exit_now)
        self._exit_timer.daemon = True
        self._db = LazyConnection(
            options.url,
            lease_seconds=options.lease_seconds,
            on_connect=self._on_connect,
            pgbouncer=not options.listen,
        )
        self._queues: list[str] = list(options.queues)

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Load tasks, then claim and run jobs until told to stop; returns the exit code."""
        load_task_modules(self.options.task_modules)
        # Jobs the tasks enqueue (`task.enqueue(...)`) go to this worker's database.
        set_default_client(Client(self.options.url))
        self._async_tasks = sorted(n for n, t in registered_tasks().items() if t.is_async)
        self._async_names = frozenset(self._async_tasks)
        if self._async_tasks:
            self._async_slots = self.options.async_concurrency
        if not self._queues:
            self._queues = sorted({"default"} | {t.queue for t in registered_tasks().values()})
        self._install_signal_handlers()
        keeper = LeaseKeeper(
            url=self.options.url,
            worker_id=self.options.worker_id,
            queues=self._queues,
            concurrency=self.options.concurrency,
            lease_seconds=self.options.lease_seconds,
            running=self.running,
            retry_delay=self.retry_delay,
            on_timeout=self._replace,
            on_cancel=self._cancel_requested,
            poll_seconds=self.options.poll_seconds,
            pgbouncer=not self.options.listen,
        )
        keeper.start()
        fence = LeaseFence(self.running, self._fenced, early=self.options.lease_seconds / 10)
        fence.start()
        metrics().workers_alive.set(1)
        if self.options.on_started is not None:
            self.options.on_started()
        _log.info(
            "worker started",
            worker=self.options.worker_id,
            queues=self._queues,
            concurrency=self.options.concurrency,
            async_concurrency=self._async_slots,
            tasks=sorted(registered_tasks()),
            wakeups="listen" if self.options.listen else "poll",
        )
        pool = ThreadPoolExecutor(self.options.concurrency, "errands-job")
        _start_every_thread(pool, self.options.concurrency)
        self._loop(pool)
        # Never join: a timed-out job may be stuck on its thread, and the process exits anyway.
        pool.shutdown(wait=False, cancel_futures=True)
        self._events.stop()
        fence.stop()
        keeper.stop()
        # Its last renewal may hang on the database; a job to stop cannot wait for it.
        keeper.join(timeout=0 if self._abandoning else 2)
        self._db.close()
        self._exit_timer.cancel()  # out in time: exit the ordinary way
        code = EXIT_REPLACE if self._replacing else EXIT_OK
        _log.info("worker stopped", worker=self.options.worker_id, exit_code=code)
        return code

    def stop(self) -> None:
        """Stop claiming; running jobs finish and are acknowledged, then run() returns."""
        self._stopping = True
        self._wake()

    def _replace(self) -> None:
        self._replacing = True
        self._wake()

    def _fenced(self, entries: list[Entry]) -> None:
        """On the fence's thread: these attempts' leases passed by our clock; stop them.

        Their outcomes are never written. A coroutine is cancelled (and the process
        replaced should it not end within ASYNC_CANCEL_GRACE_SECONDS); a job on a
        thread cannot be stopped, so the process exits at once, leaving what it
        still owed to be released by its supervisor or reaped.
        """
        for entry in entries:
            _log.warning(
                "lease running out by this worker's clock without a renewal; attempt stopped, "
                "its outcome will not be written",
                **log_fields(entry, self.options.worker_id),
            )
            metrics().leases_lost.inc()
        coroutines = [e for e in entries if e.started and is_async(e.job)]
        for entry in coroutines:
            if entry.cancel is not None:
                entry.cancel()
        if coroutines:
            timer = threading.Timer(
                ASYNC_CANCEL_GRACE_SECONDS, self._abandon_if_running, [coroutines]
            )
            timer.daemon = True
            timer.start()
        if any(e.started and not is_async(e.job) for e in entries):
            self._abandon()

    def _cancel_requested(self, entries: list[Entry], heard: str) -> None:
        """On the lease keeper's thread: a cancel of these attempts was requested (`heard`
        by notification, poll or renewal).

        A coroutine is cancelled; a thread task sees current_job().cancel_requested
        (errands.check_cancelled() raises); an attempt waiting for a slot never starts.
        However each ends, its job is recorded cancelled (the database decides).
        """
        for entry in entries:
            _log.info(
                "cancel requested; stopping the attempt",
                how="coroutine cancelled"
                if entry.started and is_async(entry.job)
                else "task told"
                if entry.started
                else "not started",
                heard=heard,
                **log_fields(entry, self.options.worker_id),
            )
            metrics().cancels_requested.labels(entry.job.queue, entry.job.task).inc()
            if entry.cancel is not None:
                entry.cancel()
        self._wake()  # those waiting for a slot are settled by the claim loop

    def _abandon_if_running(self, coroutines: list[Entry]) -> None:
        if not all(entry.ended for entry in coroutines):
            self._abandon()

    def _abandon(self) -> None:
        with self._abandon_lock:  # the fence and a cancellation's grace timer may both call
            if self._abandoning:
                return
            self._abandoning = self._replacing = True
        self._db.cut()  # a statement hanging on a silent peer must not keep the job running
        self._wake()
        # Nor may a connection attempt (bounded by connect_timeout only): exit without the loop.
        self._exit_timer.start()

    def _exit_now(self) -> None:
        _log.warning(
            "worker replaced at once: its claim loop is stuck connecting to the database",
            worker=self.options.worker_id,
        )
        os._exit(EXIT_REPLACE)

    def _install_signal_handlers(self) -> None:
        def on_term(signum: int, frame: FrameType | None) -> None:
            if not self._stopping:
                _log.info("stop requested; finishing running jobs", worker=self.options.worker_id)
            self.stop()

        signal.signal(signal.SIGTERM, on_term)
        # Ctrl-C reaches the whole process group; the supervisor decides what happens.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    # -- the loop --------------------------------------------------------------------------

    def _loop(self, pool: ThreadPoolExecutor) -> None:
        while True:
            if self._abandoning:
                _log.warning(
                    "worker replaced: a job on a thread outlived its lease; jobs still held "
                    "here are released by the supervisor, or reaped",
                    worker=self.options.worker_id,
                    held=len(self.running),
                    unacknowledged=len(self._acks),
                )
                return
            self._collect_outcomes()
            self._dispatch(pool)
            draining = self._stopping or self._replacing
            if draining and self._nothing_owed():
                return
            request = self._claim_request(draining)
            gathering = self._gathering_seconds(request)
            idle = not self._executing and not self._executing_async and not self._ready
            acks_due = self._acks.due(flush=draining or idle)
            # Refill when the prefetch buffer runs low; without one, once slots are free. After
            # a claim that found fewer jobs than it asked for, only with acknowledgements to
            # send or once woken: another claim at once would find none either.
            refill = (
                request.wanted
                and len(self._ready) <= self.options.prefetch // 2
                and not gathering
                and (not self._found_all or acks_due)
            )
            if refill or acks_due:
                try:
                    conn = self._db.get_retrying(give_up=self._must_give_up)
                    if conn is None:
                        continue  # abandoning, or stopping with nothing owed
                    leased_at = time.monotonic()
                    claimed = self._acks.write(conn, request if refill else request.nothing())
                except psycopg.OperationalError as exc:
                    self._db.drop(exc)
                    continue
                self._slot_freed_at = None
                if refill:
                    self._found_all = _found_all(request, claimed, self._async_names) and (
                        self._acks.recheck_seconds != 0.0  # a limit asks for another claim now
                    )
                lease = self.options.lease_seconds
                self._ready.extend(self.running.hold(job, leased_at, lease) for job in claimed)
                self._dispatch(pool)
                if claimed:
                    continue  # there may be more work now: sleep only when a claim finds none
            ceiling = gathering or self.options.poll_seconds
            recheck = self._acks.recheck_seconds
            if request.wanted and recheck is not None:  # a limit holds jobs back until then
                ceiling = min(ceiling, max(recheck, RECHECK_FLOOR_SECONDS))
            listen = refill or (self._found_all and request.wanted)
            self._wait(listen_too=listen, timeout=self._acks.seconds_until_due(ceiling))
            self._found_all = False  # woken: a job finished, a notification came, or time passed

    def _gathering_seconds(self, request: ClaimRequest) -> float:
        """How much longer to let freed thread slots gather before claiming for them; 0: now.

        A claim for one slot costs the database as much as a claim for eight, so a
        freed slot waits up to CLAIM_GATHER_SECONDS for others while jobs still run.
        A job is never claimed into a slot it must wait for: this delays only claims.
        """
        threads = self.options.concurrency + self.options.prefetch
        if not request.wanted or not self._executing or request.limit * 2 >= threads:
            return 0.0
        now = time.monotonic()
        if self._slot_freed_at is None:
            self._slot_freed_at = now
        return max(0.0, self._slot_freed_at + CLAIM_GATHER_SECONDS - now)

    def _claim_request(self, draining: bool) -> ClaimRequest:
        """As many jobs of each kind as its free slots can start now (threads also fill the
        prefetch buffer): a claimed job never waits while a slot of its kind is free elsewhere."""
        if draining:
            return ClaimRequest(self._queues, 0, self.options.lease_seconds)
        held_async = sum(1 for entry in self._ready if self._on_loop(entry.job))
        held_threads = len(self._ready) - held_async
        threads = self.options.concurrency + self.options.prefetch - self._executing - held_threads
        coroutines = self._async_slots - self._executing_async - held_async
        # A claim locks the rows it reads for both kinds before it keeps what fits, so
        # it reads at most as many for coroutines as a thread claim does.
        coroutines = min(coroutines, self.options.concurrency)
        return ClaimRequest(
            self._queues,
            threads,
            self.options.lease_seconds,
            AsyncSlots(self._async_tasks, coroutines),
        )

    def _dispatch(self, pool: ThreadPoolExecutor) -> None:
        """Start held jobs, in claim order, each where a slot of its kind is free.

        Claims take no more jobs of a kind than its free slots, so a job waits
        here only in the prefetch buffer (`--prefetch`), held while others start.
        """
        waiting: deque[Entry] = deque()
        while self._ready:
            entry = self._ready.popleft()
            if entry.lost:  # its lease went while it waited: another worker has it
                self.running.finish(entry)
                if not entry.settled:
                    self._report_lost(entry)
            elif entry.cancel_requested:  # asked to cancel while it waited: never started
                if self.running.finish(entry):
                    self._acks.add(entry, cancelled(0.0, before_start=True))
            elif self._on_loop(entry.job) and self._executing_async < self._async_slots:
                self._begin(entry, grace=ASYNC_CANCEL_GRACE_SECONDS)
                self._executing_async += 1
                future = self._events.submit(self._execute_async(entry))
                entry.cancel = future.cancel
                # Its lease passed, or a cancel came, before it could be cancelled.
                if entry.fenced or entry.cancel_requested:
                    future.cancel()
            elif not self._on_loop(entry.job) and self._executing < self.options.concurrency:
                self._begin(entry, grace=0.0)
                self._executing += 1
                pool.submit(self._execute, entry)
            else:
                waiting.append(entry)
        self._ready = waiting

    def _begin(self, entry: Entry, grace: float) -> None:
        self.running.begin(entry, self._timeout_of(entry.job), grace)
        _record_wait(entry)

    def _on_loop(self, job: Job) -> bool:
        """Whether the job runs as a coroutine (execution.is_async, without a look-up per job)."""
        return job.task in self._async_names

    def _collect_outcomes(self) -> None:
        self._outcomes_signalled = False  # before reading: a later outcome wakes the loop again
        while True:
            try:
                entry, outcome, on_loop = self._outcomes.get_nowait()
            except queue.Empty:
                return
            if on_loop:
                self._executing_async -= 1
            else:
                self._executing -= 1
            job = entry.job
            metrics().job_duration.labels(job.queue, job.task).observe(outcome.seconds)
            if self.running.finish(entry):
                self._acks.add(entry, outcome)
            elif not entry.settled:  # a timed-out or fenced attempt was reported already
                self._report_lost(entry)

    def _execute(self, entry: Entry) -> None:
        with structlog.contextvars.bound_contextvars(**log_fields(entry, self.options.worker_id)):
            outcome = execute(entry.job, WorkerAttempt(entry, self.options.worker_id))
        self._put_outcome((entry, outcome, False))

    async def _execute_async(self, entry: Entry) -> None:
        started = time.monotonic()
        try:
            with structlog.contextvars.bound_contextvars(
                **log_fields(entry, self.options.worker_id)
            ):
                link = WorkerAttempt(entry, self.options.worker_id)
                outcome: Outcome = await execute_async(entry.job, link)
        except asyncio.CancelledError:
            if entry.cancel_requested:  # a cancel request: the job ends cancelled
                outcome = cancelled(time.monotonic() - started)
            else:  # by the fence, whose attempts are never written
                outcome = Failed("CancelledError: the coroutine was cancelled", None, 0.0)
        entry.ended = True
        self._put_outcome((entry, outcome, True))

    def _put_outcome(self, outcome: tuple[Entry, Outcome, bool]) -> None:
        """Hand an outcome to the loop, waking it unless an earlier outcome did and the loop has
        not collected since (it then reads this one with that one)."""
        self._outcomes.put(outcome)
        if not self._outcomes_signalled:
            self._outcomes_signalled = True
            self._wake()

    def _report_lost(self, entry: Entry) -> None:
        _log.warning("lease lost; result not written", **log_fields(entry, self.options.worker_id))
        metrics().leases_lost.inc()

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, listen_too: bool, timeout: float) -> None:
        """Sleep until a job finishes, a signal arrives, a NOTIFY comes, or the poll interval."""
        watched = [self._wake_r]
        conn = self._db.current
        if listen_too and conn is not None and self.options.listen:
            if self._pending_notifications(conn):
                return
            watched.append(conn.fileno())
        ready, _, _ = select.select(watched, [], [], timeout)
        if self._wake_r in ready:
            os.read(self._wake_r, 4096)

    def _pending_notifications(self, conn: psycopg.Connection[Any]) -> bool:
        try:
            return bool(list(conn.notifies(timeout=0)))
        except psycopg.OperationalError as exc:
            self._db.drop(exc)
            return True

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the loop is awake already
            os.write(self._wake_w, b"!")

    # -- the connection --------------------------------------------------------------------

    def _on_connect(self, conn: psycopg.Connection[Any]) -> None:
        # Recorded before the first claim, so that a supervisor starting on this machine
        # can tell that this process is gone should it die holding jobs.
        announce(conn, self.options.worker_id, self._queues, self.options.concurrency)
        # Before the first claim, and again after a reconnection: what the code declares.
        declare_task_limits(conn, {name: t.limits for name, t in registered_tasks().items()})
        if self.options.listen:  # connected directly: statements are prepared
            conn.execute(f"listen {CHANNEL}")
            # The claim is planned once, for good: its plan does not depend on the values
            # given to it, and planning it anew each time (PostgreSQL's default for its
            # prepared statements) would cost about 0.5 ms a claim (bench/RESULTS.md).
            conn.execute("set plan_cache_mode = force_generic_plan")

    def _must_give_up(self) -> bool:
        # Stopping with nothing left to report: no reason to wait for the database.
        return self._abandoning or (self._stopping and self._nothing_owed())

    def _nothing_owed(self) -> bool:
        """No job held, and no outcome left to write."""
        return not len(self.running) and not self._acks

    # -- policy ----------------------------------------------------------------------------

    def retry_delay(self, job: Job) -> float:
        spec = registered(job.task)
        backoff = spec.backoff if spec and spec.backoff else self.options.backoff
        return backoff.delay(job.attempts)

    def _timeout_of(self, job: Job) -> float | None:
        spec = registered(job.task)
        return spec.timeout if spec else None


def _start_every_thread(pool: ThreadPoolExecutor, threads: int) -> None:
    """Start the pool's threads before the first claim. ThreadPoolExecutor starts one per
    job handed over until it has them all: the first batch's jobs would wait, leased, while
    the loop created their threads one after another."""
    all_started = threading.Barrier(threads)
    for started in [pool.submit(all_started.wait) for _ in range(threads)]:
        started.result()


def _record_wait(entry: Entry) -> None:
    """From due to running: until the claim, plus any wait in the prefetch buffer."""
    job = entry.job
    if job.started_at is not None:
        waited = (job.started_at - job.run_at).total_seconds() + time.monotonic() - entry.claimed
        metrics().job_wait.labels(job.queue, job.task).observe(max(0.0, waited))


def run_worker(options: WorkerOptions) -> int:
    return Worker(options).run()


def _found_all(request: ClaimRequest, claimed: list[Job], async_names: frozenset[str]) -> bool:
    """Whether the claim took fewer jobs of each kind it asked for than it asked for: then every
    due job it may take is taken. (Each kind is filled on its own: a claim that took all the
    coroutines it asked for may leave more behind, however few threads' jobs it found.)"""
    coroutines = sum(1 for job in claimed if job.task in async_names)
    threads = len(claimed) - coroutines
    return (request.limit <= 0 or threads < request.limit) and (
        request.async_slots.limit <= 0 or coroutines < request.async_slots.limit
    )
