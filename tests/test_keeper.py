"""The lease keeper, in process: renewals against a real database, races forced."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from errands import Client
from errands.harness.waiting import wait_for
from errands.queue.lease import Completion, claim, complete, reap
from errands.workers.keeper import LeaseKeeper
from errands.workers.running import Entry, RunningJobs

Conn = psycopg.Connection[Any]
OWNER = "w1"


class RacingRunningJobs(RunningJobs):
    """Runs `race` once, right after the keeper has listed the attempts it will renew."""

    def __init__(self, race: Callable[[list[Entry]], None]) -> None:
        super().__init__()
        self._race: Callable[[list[Entry]], None] | None = race
        self.raced = threading.Event()

    def held(self) -> list[Entry]:
        entries = super().held()
        if entries and self._race is not None:
            race, self._race = self._race, None
            race(entries)
            self.raced.set()
        return entries


def run_keeper_until_raced(db_url: str, running: RacingRunningJobs) -> None:
    keeper = LeaseKeeper(
        url=db_url,
        worker_id=OWNER,
        queues=["default"],
        concurrency=1,
        lease_seconds=0.6,
        running=running,
        retry_delay=lambda job: 1.0,
        on_timeout=lambda: None,
    )
    keeper.start()
    assert running.raced.wait(10), "the keeper never renewed"
    keeper.stop()  # the renewal under way finishes first: stop is seen at the next tick
    keeper.join(10)


def leases_lost() -> float:
    return REGISTRY.get_sample_value("errands_leases_lost_total") or 0.0


def lease_lost_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if "lease lost" in line["event"]]


def test_a_heartbeat_racing_a_completion_neither_logs_nor_counts_a_lost_lease(
    client: Client, conn: Conn, db_url: str
) -> None:
    client.enqueue("t")
    (job,) = claim(conn, OWNER, ["default"], 1, 30)

    def claim_loop_acknowledges(entries: list[Entry]) -> None:
        (entry,) = entries
        assert running.finish(entry)  # what the claim loop does before it acknowledges
        complete(conn, OWNER, [Completion(job.id, job.attempts, "1")])

    running = RacingRunningJobs(claim_loop_acknowledges)
    running.hold(job, time.monotonic(), 30)
    before = leases_lost()
    with capture_logs() as logs:
        run_keeper_until_raced(db_url, running)
    assert lease_lost_lines(logs) == []
    assert leases_lost() == before
    assert client.get(job.id).state.value == "completed"  # type: ignore[union-attr]


def test_a_lease_taken_by_another_worker_is_logged_and_marked_lost(
    client: Client, conn: Conn, db_url: str
) -> None:
    client.enqueue("t")
    (job,) = claim(conn, OWNER, ["default"], 1, 30)

    def another_worker_takes_it(entries: list[Entry]) -> None:
        conn.execute("update errands_jobs set lease_expires_at = now() where id = %s", (job.id,))
        reap(conn)
        assert claim(conn, "w2", ["default"], 1, 30)

    running = RacingRunningJobs(another_worker_takes_it)
    entry = running.hold(job, time.monotonic(), 30)
    with capture_logs() as logs:
        run_keeper_until_raced(db_url, running)
    assert [line["job_id"] for line in lease_lost_lines(logs)] == [job.id]
    assert entry.lost
    assert not running.finish(entry)  # its outcome will not be written


class Heard:
    """The cancel requests a keeper passes on, and how it heard each."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, str]] = []
        self.event = threading.Event()

    def __call__(self, entries: list[Entry], heard: str) -> None:
        self.requests += [(entry.job.id, heard) for entry in entries]
        self.event.set()


def keeper_hearing(
    db_url: str, running: RunningJobs, heard: Heard, lease_seconds: float = 30, **options: Any
) -> LeaseKeeper:
    keeper = LeaseKeeper(
        url=db_url,
        worker_id=OWNER,
        queues=["default"],
        concurrency=1,
        lease_seconds=lease_seconds,  # no renewal but the first: a request comes some other way
        running=running,
        retry_delay=lambda job: 1.0,
        on_timeout=lambda: None,
        on_cancel=heard,
        **options,
    )
    keeper.start()
    return keeper


def first_renewal_done(conn: Conn, job_id: int) -> bool:
    row = conn.execute(
        "select lease_expires_at > started_at + interval '30 s' from errands_jobs where id = %s",
        (job_id,),
    ).fetchone()
    return bool(row and row[0])


def test_a_cancel_request_is_heard_by_notification_even_after_the_connection_was_lost(
    client: Client, conn: Conn, db_url: str
) -> None:
    client.enqueue("t")
    (job,) = claim(conn, OWNER, ["default"], 1, 30)
    running = RunningJobs()
    entry = running.hold(job, time.monotonic(), 30)
    heard = Heard()
    keeper = keeper_hearing(db_url, running, heard, lease_seconds=600)  # renewals 200 s apart
    try:
        wait_for(lambda: lease_end(conn, job.id) > job.lease_expires_at, what="the first renewal")
        renewed = lease_end(conn, job.id)
        # Its connection dies (a restart, a proxy): it renews at once on a new one, which
        # listens again, rather than at its next renewal, a third of a lease later.
        keeper._db.cut()
        wait_for(lambda: lease_end(conn, job.id) > renewed, what="a renewal on a new connection")
        client.cancel(job.id)
        assert heard.event.wait(10), "the request never reached the worker"
    finally:
        keeper.stop()
        keeper.join(10)
    assert heard.requests == [(job.id, "notification")] and entry.cancel_requested


def lease_end(conn: Conn, job_id: int) -> Any:
    row = conn.execute("select lease_expires_at from errands_jobs where id = %s", (job_id,))
    return row.fetchone()[0]  # type: ignore[index]


def test_without_notifications_a_cancel_request_is_heard_by_polling(
    client: Client, conn: Conn, db_url: str
) -> None:
    client.enqueue("t")
    (job,) = claim(conn, OWNER, ["default"], 1, 30)
    running = RunningJobs()
    entry = running.hold(job, time.monotonic(), 30)
    heard = Heard()
    keeper = keeper_hearing(db_url, running, heard, pgbouncer=True, poll_seconds=0.2)
    try:
        wait_for(lambda: first_renewal_done(conn, job.id), what="the first renewal")
        client.cancel(job.id)
        assert heard.event.wait(10), "the request never reached the worker"
    finally:
        keeper.stop()
        keeper.join(10)
    assert heard.requests == [(job.id, "poll")] and entry.cancel_requested
