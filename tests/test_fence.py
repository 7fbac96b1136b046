"""The lease fence, in process: an attempt is stopped once its lease has passed by the worker's
own clock, counted from when its claim or renewal was sent, whatever the database does."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

from errands import Client
from errands.harness.partition import PartitionProxy
from errands.queue.lease import claim
from errands.workers.fence import LeaseFence
from errands.workers.keeper import LeaseKeeper
from errands.workers.running import Entry, RunningJobs

Conn = psycopg.Connection[Any]


def held_job(client: Client, conn: Conn) -> Any:
    client.enqueue("t")
    (job,) = claim(conn, "w1", ["default"], 1, 30)
    return job


def test_a_lease_ends_a_lease_after_its_claim_was_sent(client: Client, conn: Conn) -> None:
    running = RunningJobs()
    entry = running.hold(held_job(client, conn), leased_at=100.0, lease_seconds=2.0)
    assert running.next_expiry() == 102.0
    assert running.take_expired(101.999) == []
    assert running.take_expired(102.0) == [entry]
    assert entry.lost and entry.fenced and len(running) == 0
    assert not running.finish(entry)  # its outcome is never written


def test_a_renewal_extends_the_lease_from_when_it_was_sent(client: Client, conn: Conn) -> None:
    running = RunningJobs()
    entry = running.hold(held_job(client, conn), leased_at=100.0, lease_seconds=2.0)
    running.renewed([entry], sent_at=101.5, lease_seconds=2.0)
    assert running.take_expired(102.5) == [] and running.next_expiry() == 103.5


def test_the_fence_stops_an_attempt_while_the_keepers_renewal_hangs(
    client: Client, conn: Conn, server_url: str, db_url: str
) -> None:
    proxy = PartitionProxy(server_url).start()
    running = RunningJobs()
    entry = running.hold(held_job(client, conn), time.monotonic(), 1.5)
    fenced: list[Entry] = []
    stopped = threading.Event()

    def on_expired(entries: list[Entry]) -> None:
        fenced.extend(entries)
        stopped.set()

    keeper = LeaseKeeper(
        url=proxy.url(db_url),
        worker_id="w1",
        queues=["default"],
        concurrency=1,
        lease_seconds=30,  # its statements may hang for 10 s before they are cut
        running=running,
        retry_delay=lambda job: 1.0,
        on_timeout=lambda: None,
    )
    fence = LeaseFence(running, on_expired)
    proxy.freeze(os.getpid())
    keeper.start()
    fence.start()
    try:
        assert stopped.wait(10), "the fence never fired"
        assert fenced == [entry] and entry.fenced
        assert keeper.is_alive()  # still waiting on its renewal
    finally:
        proxy.heal(os.getpid())
        fence.stop()
        keeper.stop()
        keeper.join(15)
        proxy.stop()
