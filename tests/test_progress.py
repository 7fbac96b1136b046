"""current_job().set_progress(): what it takes, and how rarely it is written."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

import errands
from errands import Client, ErrandsError, InvalidArgument, JobState
from errands.limits import MAX_PROGRESS_BYTES
from errands.queue.jobs import Job
from errands.queue.lease import Completion, Held, claim, complete, heartbeat
from errands.tasks import CurrentJob, running
from errands.testing import run
from errands.workers.running import RunningJobs

Conn = psycopg.Connection[Any]
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=20)
SMALL_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)


def reported(value: Any) -> str:
    """What set_progress hands its worker for `value`."""
    seen: list[str] = []

    class Link(errands.tasks.AttemptLink):
        def report_progress(self, progress_json: str) -> None:
            seen.append(progress_json)

    job = CurrentJob(1, "t", "default", 1, 5, {}, datetime.now(UTC), Link())
    job.set_progress(value)
    return seen[0]


@given(st.floats(0, 1) | st.sampled_from([0, 1]))
def test_a_fraction_from_0_to_1_is_taken(value: float) -> None:
    assert json.loads(reported(value)) == value


@given(st.dictionaries(TEXT, SMALL_JSON, max_size=5))
def test_a_small_json_object_is_taken_as_it_will_read_back(value: dict[str, Any]) -> None:
    assert json.loads(reported(value)) == value


@pytest.mark.parametrize(
    "value",
    [-0.01, 1.0001, math.nan, math.inf, True, "50%", [0.5], None, 10**400],
)
def test_anything_else_is_refused_naming_progress(value: Any) -> None:
    with pytest.raises(InvalidArgument) as refused:
        reported(value)
    assert [e.field for e in refused.value.errors] == ["progress"]


def nest(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [{"stage": "x" * MAX_PROGRESS_BYTES}, {"bad": "\x00"}, {"n": math.nan}, {"deep": nest(70)}],
)
def test_an_object_too_big_or_not_storable_is_refused(value: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        reported(value)


def test_many_reports_are_stored_at_most_once_a_second_per_job(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    (job,) = claim(conn, "w1", ["default"], 1, 30)
    running_jobs = RunningJobs()
    entry = running_jobs.hold(job, leased_at=0.0, lease_seconds=30)
    for n in range(1000):
        entry.report_progress(str(n / 1000))
    due = running_jobs.progress_due(now=10.0, interval=1.0)
    assert due == {entry: (1000, "0.999")}
    running_jobs.progress_sent(due, at=10.0)
    entry.report_progress("1.0")
    assert running_jobs.progress_due(now=10.5, interval=1.0) == {}  # stored under a second ago
    assert running_jobs.progress_due(now=11.0, interval=1.0) == {entry: (1001, "1.0")}
    assert entry.unstored_progress() == "1.0"  # what the completion carries, if not stored yet


def test_the_completion_stores_the_last_progress_and_a_new_attempt_starts_without(
    client: Client, conn: Conn
) -> None:
    client.enqueue("t")
    (job,) = claim(conn, "w1", ["default"], 1, 30)
    heartbeat(conn, "w1", [Held(job.id, job.attempts)], 30, {job.id: "0.5"})
    complete(conn, "w1", [Completion(job.id, job.attempts, "null", "1.0")])
    assert stored_progress(client, job.id) == 1.0
    client_job = client.get(job.id)
    assert client_job is not None and client_job.state is JobState.COMPLETED
    conn.execute("update errands_jobs set state = 'pending', finished_at = null")
    (again,) = claim(conn, "w2", ["default"], 1, 30)
    assert again.progress is None


def stored_progress(client: Client, job_id: int) -> Any:
    job: Job | None = client.get(job_id)
    assert job is not None
    return job.progress


def test_a_task_run_outside_a_worker_checks_its_reports_and_stores_nothing() -> None:
    @errands.task("progress_in_tests")
    def counting() -> str:
        errands.current_job().set_progress({"done": 1, "total": 2})
        errands.check_cancelled()  # never requested outside a worker
        return "done"

    assert run(counting) == "done"


def test_check_cancelled_outside_a_task_is_an_errands_error() -> None:
    with pytest.raises(ErrandsError, match="only available inside a running task"):
        errands.check_cancelled()


def test_check_cancelled_raises_once_the_worker_says_a_cancel_was_requested() -> None:
    class Asked(errands.tasks.AttemptLink):
        @property
        def cancel_requested(self) -> bool:
            return True

    job = CurrentJob(7, "t", "default", 1, 5, {}, datetime.now(UTC), Asked())
    with running(job), pytest.raises(errands.Cancelled) as cancelled:
        errands.check_cancelled()
    assert cancelled.value.job_id == 7
