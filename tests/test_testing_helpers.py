"""errands.testing used the way an application's own tests would use it: no daemon, no database."""

from __future__ import annotations

import asyncio

import pytest

import errands
from errands.testing import capture_jobs, run, run_async
from tests.example_app import DECLINED, RATE_LIMITED, charge, send_follow_up, send_welcome, sign_up


def test_signing_up_enqueues_a_welcome_email() -> None:
    with capture_jobs() as jobs:
        job_id = sign_up("ada@example.com", "Ada")
    [welcome] = jobs.of(send_welcome)
    assert welcome.id == job_id
    assert welcome.payload == {"to": "ada@example.com", "name": "Ada"}
    assert (welcome.queue, welcome.max_attempts, welcome.state) == (
        "mail",
        3,
        errands.JobState.PENDING,
    )


def test_the_welcome_email_runs_with_its_job_and_enqueues_a_follow_up() -> None:
    with capture_jobs() as jobs:
        result = run(send_welcome, {"to": "ada@example.com"}, attempt=2)
    assert result == {"to": "ada@example.com", "body": "Welcome, there!", "attempt": 2}
    [follow_up] = jobs.of("send_follow_up")
    assert follow_up.run_at > follow_up.created_at  # a day later


def test_running_every_captured_job_runs_the_whole_chain() -> None:
    with capture_jobs() as jobs:
        sign_up("ada@example.com", "Ada")
    results = jobs.run_all()
    assert [job.task for job in jobs] == ["send_welcome", "send_follow_up"]
    assert results[1] == "follow-up to ada@example.com"


def test_an_async_task_runs_inline_too() -> None:
    assert run(send_follow_up, {"to": "bob"}) == "follow-up to bob"


async def _run_inside_a_loop() -> str:
    result: str = await run_async(send_follow_up, {"to": "eve"})
    return result


def test_an_async_test_awaits_the_task() -> None:
    assert asyncio.run(_run_inside_a_loop()) == "follow-up to eve"


def test_a_declined_card_fails_for_good_and_a_rate_limit_asks_for_a_retry() -> None:
    with pytest.raises(errands.Fail, match="card declined"):
        run(charge, {"card": DECLINED, "cents": 100})
    with pytest.raises(errands.Retry) as retry:
        run(charge, {"card": RATE_LIMITED, "cents": 100})
    assert retry.value.in_seconds == 30
    assert not charge.retries(ValueError("nothing to charge"))


def test_a_payload_the_task_cannot_take_is_refused_as_enqueue_would() -> None:
    with pytest.raises(errands.InvalidJob, match="cents"):
        run(charge, {"card": "4242"})
    with capture_jobs() as jobs, pytest.raises(errands.InvalidJob, match="amount"):
        charge.enqueue(card="4242", amount=3)
    assert jobs == []


def test_jobs_enqueued_by_name_are_captured_too() -> None:
    with capture_jobs() as jobs:
        errands.Client("postgresql://nowhere.invalid/none").enqueue(
            "charge", {"card": "4242", "cents": 5}
        )
    assert [(job.task, job.payload) for job in jobs] == [("charge", {"card": "4242", "cents": 5})]


def test_current_job_is_set_only_while_the_task_runs() -> None:
    with capture_jobs():
        run(send_welcome, {"to": "ada@example.com"})
    with pytest.raises(errands.ErrandsError):
        errands.current_job()


def test_a_captured_workflow_comes_back_linked_as_the_database_would_store_it() -> None:
    with capture_jobs() as jobs:
        workflow = errands.chain(
            send_welcome.s(to="ada@example.com"),
            errands.group(
                send_follow_up.s(to="ada@example.com"), send_follow_up.s(to="bob@example.com")
            ),
        ).enqueue()
    first, *rest = workflow.jobs
    assert list(jobs) == workflow.jobs
    assert {job.workflow_id for job in jobs} == {workflow.id}
    assert (first.state, first.parents) == (errands.JobState.PENDING, None)
    assert [(job.state, job.parents) for job in rest] == [
        (errands.JobState.WAITING, [first.id]),
        (errands.JobState.WAITING, [first.id]),
    ]


def test_running_a_captured_workflow_runs_parents_before_children() -> None:
    with capture_jobs() as jobs:
        errands.chain(
            send_welcome.s(to="ada@example.com"), send_follow_up.s(to="ada@example.com")
        ).enqueue()
    results = jobs.run_all()
    assert [job.task for job in jobs] == ["send_welcome", "send_follow_up", "send_follow_up"]
    assert results[1] == "follow-up to ada@example.com"
