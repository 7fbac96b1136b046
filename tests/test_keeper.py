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
