"""Acknowledgements, in process: when finished attempts are written, and what is written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from errands import Client, JobState
from errands.queue.jobs import Job
from errands.queue.lease import claim, release
from errands.workers.acks import ACK_FLUSH_SECONDS, AckMode, Acknowledgements, ClaimRequest
from errands.workers.execution import Failed, Succeeded
from errands.workers.running import Entry

Conn = psycopg.Connection[Any]
OWNER = "w1"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def acks(
    clock: Clock | None = None, mode: AckMode = "batched", lost: list[Entry] | None = None
) -> Acknowledgements:
    return Acknowledgements(
        worker_id=OWNER,
        mode=mode,
        retry_delay=lambda job: 60.0,
        on_lost=(lost if lost is not None else []).append,
        clock=clock or Clock(),
    )


def claimed(client: Client, conn: Conn, count: int = 1) -> list[Entry]:
    for n in range(count):
        client.enqueue("t", {"n": n})
    return [Entry(job) for job in claim(conn, OWNER, ["default"], count, 30)]


def entry_of(job_id: int = 1) -> Entry:
    """An attempt that exists only in memory: the timing tests need no database."""
    now = datetime.now(UTC)
    job = Job(job_id, "default", "t", {}, JobState.IN_PROGRESS, 0, now, 1, 5, None, None,
              OWNER, now, None, [], None, now, now, None, now)  # fmt: skip
    return Entry(job)


def ok() -> Succeeded:
    return Succeeded('{"ok": true}', 0.001)


def no_claim(limit: int = 0) -> ClaimRequest:
    return ClaimRequest(["default"], limit, 30)


def state_of(conn: Conn, job_id: int) -> str:
    row = conn.execute("select state from errands_jobs where id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


def test_nothing_owed_is_never_due() -> None:
    assert not acks().due(flush=True)


def test_a_success_waits_for_others_until_the_window_has_passed() -> None:
    clock = Clock()
    pending = acks(clock)
    pending.add(entry_of(), ok())
    assert not pending.due(flush=False)
    clock.now = ACK_FLUSH_SECONDS
    assert pending.due(flush=False)


def test_the_window_counts_from_the_oldest_unsent_success() -> None:
    clock = Clock()
    pending = acks(clock)
    pending.add(entry_of(1), ok())
    clock.now = ACK_FLUSH_SECONDS * 0.75
    pending.add(entry_of(2), ok())
    assert pending.seconds_until_due(1.0) == pytest.approx(ACK_FLUSH_SECONDS * 0.25)
    clock.now = ACK_FLUSH_SECONDS
    assert pending.due(flush=False)


def test_a_success_is_due_at_once_when_nothing_else_can_join_the_batch() -> None:
    pending = acks()
    pending.add(entry_of(), ok())
    assert pending.due(flush=True)


def test_immediate_mode_makes_every_success_due_at_once() -> None:
    pending = acks(mode="immediate")
    pending.add(entry_of(), ok())
    assert pending.due(flush=False)


def test_a_failure_is_due_at_once() -> None:
    pending = acks()
    pending.add(entry_of(), Failed("ValueError: x", None, 0.001))
    assert pending.due(flush=False)
    assert pending.seconds_until_due(1.0) == 0.0


def test_with_nothing_owed_the_loop_may_sleep_its_whole_poll_interval() -> None:
    assert acks().seconds_until_due(0.7) == 0.7


def test_a_batch_is_completed_with_the_next_claim_in_one_write(client: Client, conn: Conn) -> None:
    first, second = claimed(client, conn, 2)
    third = client.enqueue("t", {"n": 3})
    pending = acks()
    pending.add(first, ok())
    pending.add(second, ok())
    jobs = pending.write(conn, no_claim(limit=5))
    assert [job.id for job in jobs] == [third.id]
    assert state_of(conn, first.job.id) == state_of(conn, second.job.id) == "completed"
    assert len(pending) == 0


def test_immediate_mode_completes_then_claims(client: Client, conn: Conn) -> None:
    (first,) = claimed(client, conn)
    second = client.enqueue("t", {"n": 2})
    pending = acks(mode="immediate")
    pending.add(first, ok())
    assert [job.id for job in pending.write(conn, no_claim(limit=1))] == [second.id]
    assert state_of(conn, first.job.id) == "completed"


def test_a_failure_is_written_with_the_retry_delay_of_its_task(client: Client, conn: Conn) -> None:
    (entry,) = claimed(client, conn)
    pending = acks()
    pending.add(entry, Failed("ValueError: bad", "Traceback ...", 0.001))
    pending.write(conn, no_claim())
    row = conn.execute(
        "select state, last_error, run_at - now() > interval '50 seconds'"
        " from errands_jobs where id = %s",
        (entry.job.id,),
    ).fetchone()
    assert row == ("failed", "ValueError: bad", True)


def test_a_success_whose_lease_was_lost_is_reported_lost_and_not_written(
    client: Client, conn: Conn
) -> None:
    (entry,) = claimed(client, conn)
    release(conn, OWNER)  # the job went back to pending: another worker may run it
    lost: list[Entry] = []
    pending = acks(lost=lost)
    pending.add(entry, ok())
    pending.write(conn, no_claim())
    assert lost == [entry]
    assert state_of(conn, entry.job.id) == JobState.PENDING.value


def test_a_failure_whose_lease_was_lost_is_reported_lost_and_not_written(
    client: Client, conn: Conn
) -> None:
    (entry,) = claimed(client, conn)
    release(conn, OWNER)
    lost: list[Entry] = []
    pending = acks(lost=lost)
    pending.add(entry, Failed("ValueError: bad", None, 0.001))
    pending.write(conn, no_claim())
    assert lost == [entry]
    assert state_of(conn, entry.job.id) == JobState.PENDING.value


def test_outcomes_cut_off_by_a_lost_connection_stay_owed_and_are_sent_later(
    client: Client, conn: Conn, db_url: str
) -> None:
    first, second = claimed(client, conn, 2)
    pending = acks()
    pending.add(first, ok())
    pending.add(second, Failed("ValueError: bad", None, 0.001))
    broken = psycopg.connect(db_url, autocommit=True)
    broken.close()
    try:
        pending.write(broken, no_claim())
    except psycopg.OperationalError:
        pass
    else:
        raise AssertionError("a closed connection wrote the acknowledgements")
    assert len(pending) == 2
    pending.write(conn, no_claim())
    assert len(pending) == 0
    assert state_of(conn, first.job.id) == "completed"
    assert state_of(conn, second.job.id) == "failed"


def test_a_job_others_wait_for_is_sent_at_once_and_its_child_claimed_in_the_same_write(
    client: Client, conn: Conn
) -> None:
    parent = client.enqueue("t")
    child = client.enqueue("t", after=[parent.id])
    pending = acks()
    (job,) = pending.write(conn, no_claim(limit=1))
    pending.add(Entry(job), ok())
    assert pending.due(flush=False) and pending.seconds_until_due(1.0) == 0
    assert [job.id for job in pending.write(conn, no_claim(limit=1))] == [child.id]
    assert state_of(conn, parent.id) == "completed"


def test_a_job_no_job_waits_for_still_waits_for_the_window(client: Client, conn: Conn) -> None:
    parent = client.enqueue("t")
    client.enqueue("t", after=[parent.id])
    plain = client.enqueue("t")
    pending = acks()
    jobs = {job.id: job for job in pending.write(conn, no_claim(limit=2))}
    pending.add(Entry(jobs[plain.id]), ok())
    assert not pending.due(flush=False)
