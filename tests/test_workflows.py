"""Jobs that wait for other jobs, through the real statements: a child waits until every
parent completed and becomes pending in the commit of the last completion; a failed parent
cancels its waiting descendants unless told to run; a retry re-arms them."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from errands import Client, InvalidJob, JobState
from errands.queue.admin import prune
from errands.queue.lease import Completion, Held, claim, complete, fail, release

Conn = psycopg.Connection[Any]


def run_one(conn: Conn, job_id: int, result: Any = None, owner: str = "w1") -> None:
    """Claim the job (it must be the one claimable) and complete it with `result`."""
    claimed = claim(conn, owner, ["default"], 10, 30)
    assert [job.id for job in claimed] == [job_id]
    complete(conn, owner, [Completion(job_id, claimed[0].attempts, json.dumps(result))])


def kill(conn: Conn, job_id: int, owner: str = "w1") -> None:
    """Claim the job and fail it for good (dead)."""
    claimed = claim(conn, owner, ["default"], 10, 30)
    assert [job.id for job in claimed] == [job_id]
    fail(conn, owner, Held(job_id, claimed[0].attempts), "boom", None, 1.0, permanent=True)


def state(client: Client, job_id: int) -> JobState:
    job = client.get(job_id)
    assert job is not None
    return job.state


def test_a_child_waits_until_its_parent_completed(client: Client, conn: Conn) -> None:
    parent = client.enqueue("t")
    child = client.enqueue("t", after=[parent.id])
    assert child.state is JobState.WAITING and child.parents == [parent.id]
    run_one(conn, parent.id, result=41)
    assert state(client, child.id) is JobState.PENDING
    run_one(conn, child.id)


def test_a_child_waits_for_every_parent(client: Client, conn: Conn) -> None:
    a, b = client.enqueue("t"), client.enqueue("t")
    child = client.enqueue("t", after=[a.id, b.id])
    run_one_of(conn, a.id)
    assert state(client, child.id) is JobState.WAITING
    run_one_of(conn, b.id)
    assert state(client, child.id) is JobState.PENDING


def run_one_of(conn: Conn, job_id: int) -> None:
    """Complete one job of several claimable: claim them all, complete it, release the rest."""
    claimed = claim(conn, "w9", ["default"], 100, 30)
    (mine,) = [job for job in claimed if job.id == job_id]
    complete(conn, "w9", [Completion(mine.id, mine.attempts, "null")])
    release(conn, "w9", "test")


def test_a_child_of_completed_parents_is_pending_at_once(client: Client, conn: Conn) -> None:
    parent = client.enqueue("t")
    run_one(conn, parent.id)
    child = client.enqueue("t", after=[parent.id])
    assert child.state is JobState.PENDING


def test_an_unknown_parent_is_refused_and_nothing_stored(client: Client) -> None:
    with pytest.raises(InvalidJob, match=r"after\[0\]: no job has id 999"):
        client.enqueue("t", after=[999])
    assert client.list() == []


def test_a_dead_parent_cancels_its_descendants(client: Client, conn: Conn) -> None:
    parent = client.enqueue("t")
    child = client.enqueue("t", after=[parent.id])
    grandchild = client.enqueue("t", after=[child.id])
    kill(conn, parent.id)
    for job_id in (child.id, grandchild.id):
        job = client.get(job_id)
        assert job is not None and job.state is JobState.CANCELLED
    cancelled = client.get(child.id)
    assert cancelled is not None and cancelled.cancelled_by == parent.id
    assert cancelled.last_error == f"parent job {parent.id} ended dead"


def test_a_child_told_to_run_runs_after_a_dead_parent(client: Client, conn: Conn) -> None:
    parent = client.enqueue("t")
    child = client.enqueue("t", after=[parent.id], on_parent_failure="run")
    kill(conn, parent.id)
    assert state(client, child.id) is JobState.PENDING


def test_retrying_the_dead_parent_re_arms_what_it_cancelled(client: Client, conn: Conn) -> None:
    parent = client.enqueue("t")
    child = client.enqueue("t", after=[parent.id])
    grandchild = client.enqueue("t", after=[child.id])
    kill(conn, parent.id)
    client.retry(parent.id)
    assert state(client, child.id) is JobState.WAITING
    assert state(client, grandchild.id) is JobState.WAITING
    run_one(conn, parent.id)
    assert state(client, child.id) is JobState.PENDING
    run_one(conn, child.id)
    assert state(client, grandchild.id) is JobState.PENDING


def test_cancelling_a_waiting_job_cancels_its_descendants(client: Client) -> None:
    parent = client.enqueue("t")
    child = client.enqueue("t", after=[parent.id])
    grandchild = client.enqueue("t", after=[child.id])
    client.cancel(child.id)
    assert state(client, grandchild.id) is JobState.CANCELLED
    assert state(client, parent.id) is JobState.PENDING


def test_a_long_chain_cancels_in_one_statement(client: Client, conn: Conn) -> None:
    first = client.enqueue("t")
    jobs = client.enqueue_workflow(
        [{"ref": "0", "task": "t", "after": [first.id]}]
        + [{"ref": str(n), "task": "t", "after": [str(n - 1)]} for n in range(1, 2000)]
    )
    kill(conn, first.id)
    assert {job.state for job in client.workflow(jobs[0].workflow_id or 0)} == {JobState.CANCELLED}


def test_prune_keeps_a_parent_a_child_still_needs(client: Client, conn: Conn) -> None:
    parent = client.enqueue("t")
    other = client.enqueue("t", after=[parent.id])
    run_one(conn, parent.id)
    assert prune(conn, retention_seconds=-3600) == 0
    assert client.get(parent.id) is not None
    run_one(conn, other.id)
    assert prune(conn, retention_seconds=-3600) == 2


def test_a_waiting_job_holds_its_unique_key(client: Client) -> None:
    parent = client.enqueue("t")
    waiting = client.enqueue("t", after=[parent.id], unique_key="report")
    again = client.enqueue("t", unique_key="report")
    assert again.id == waiting.id and again.state is JobState.WAITING


def test_a_job_of_a_workflow_takes_no_unique_key(client: Client) -> None:
    with pytest.raises(InvalidJob, match=r"jobs\[0\]\.unique_key"):
        client.enqueue_workflow([{"ref": "a", "task": "t", "unique_key": "k"}])
