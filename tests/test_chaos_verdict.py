"""The chaos verdict can fail: each check catches the violation it names."""

from __future__ import annotations

from typing import Any

from errands.harness.chaos import (
    CancelRequest,
    Evidence,
    StoredJob,
    clock_checks,
    job_checks,
    limit_checks,
    workflow_checks,
)


def stored(job_id: int, state: str, attempts: int = 1, **fields: Any) -> StoredJob:
    values: dict[str, Any] = {
        "id": job_id,
        "key": f"k{job_id}",
        "task": "chaos.quick",
        "payload": {},
        "state": state,
        "attempts": attempts,
        "max_attempts": 3,
        "result": None,
        "lease_expired": None,
        "due_after": 0.0,
        "lateness": 0.0,
        "failures": 0,
    }
    return StoredJob(**{**values, **fields})


def failed_checks(
    evidence: Evidence,
    kinds: dict[str, str] | None = None,
    cancels: list[CancelRequest] | None = None,
) -> list[str]:
    return [c.name for c in job_checks(evidence, kinds or {}, cancels or []) if not c.passed]


def completed(job_id: int, attempt: int, token: str) -> StoredJob:
    return stored(job_id, "completed", attempt, result={"attempt": attempt, "token": token})


def test_a_clean_record_passes() -> None:
    evidence = Evidence({1: completed(1, 1, "t")}, [(1, 1, 0, None)], [(1, 1, "t")])
    assert failed_checks(evidence) == []


def test_a_job_left_pending_fails() -> None:
    evidence = Evidence({1: stored(1, "pending", attempts=0)}, [], [])
    assert failed_checks(evidence) == [
        "every job completed, or is dead with its budget spent when it always fails"
    ]


def test_a_tick_enqueued_after_the_storm_settled_may_stay_pending() -> None:
    # The daemons' schedulers may enqueue one while they stop; no worker claims it then.
    tick = stored(1, "pending", attempts=0, enqueued_after_settling=True)
    assert failed_checks(Evidence({1: tick}, [], [])) == []


def test_a_result_written_by_an_earlier_attempt_fails_the_fencing_check() -> None:
    # Attempt 2 finished the job, but the stored result came from attempt 1 (a zombie).
    job = stored(1, "completed", 2, result={"attempt": 1, "token": "old"})
    evidence = Evidence(
        {1: job}, [(1, 1, 0, None), (1, 2, 0, None)], [(1, 1, "old"), (1, 2, "new")]
    )
    assert failed_checks(evidence) == [
        "every stored result came from the job's last attempt (fencing)"
    ]


def test_a_result_nobody_recorded_fails_the_fencing_check() -> None:
    evidence = Evidence({1: completed(1, 1, "forged")}, [(1, 1, 0, None)], [(1, 1, "real")])
    assert "every stored result came from the job's last attempt (fencing)" in failed_checks(
        evidence
    )


def test_a_completed_job_that_never_started_fails() -> None:
    evidence = Evidence({1: completed(1, 1, "t")}, [], [(1, 1, "t")])
    assert failed_checks(evidence) == ["every completed job ran at least once"]


def test_a_dead_job_that_should_have_completed_fails() -> None:
    evidence = Evidence({1: stored(1, "dead", 3)}, [(1, 1, 0, None)], [])
    assert failed_checks(evidence) == [
        "every job completed, or is dead with its budget spent when it always fails"
    ]


def test_a_job_that_settled_wrongly_is_named_with_its_task_and_spent_attempts() -> None:
    # What a reader of a failed run needs first: which workload it was and what it spent.
    evidence = Evidence({7: stored(7, "dead", 3, task="chaos.slow")}, [(7, 1, 0, None)], [])
    (check,) = [c for c in job_checks(evidence, {}) if not c.passed]
    assert check.detail == "1: ['7 chaos.slow dead after 3/3 attempts']"


def test_an_always_failing_job_must_end_dead_with_its_budget_spent() -> None:
    kinds = {"k1": "doomed"}
    spent = Evidence({1: stored(1, "dead", 3)}, [(1, 1, 0, None)], [])
    early = Evidence({1: stored(1, "dead", 2)}, [(1, 1, 0, None)], [])
    assert failed_checks(spent, kinds) == []
    assert failed_checks(early, kinds) != []


def test_a_job_left_in_progress_past_its_lease_fails() -> None:
    evidence = Evidence({1: stored(1, "in_progress", lease_expired=True)}, [(1, 1, 0, None)], [])
    assert "nothing stays in progress past its lease" in failed_checks(evidence)


def failed_clock_checks(
    jobs: list[StoredJob], delayed: set[str] = frozenset(), leases: list[tuple[float, float]] = ()
) -> list[str]:
    evidence = Evidence({job.id: job for job in jobs}, [], [])
    return [c.name for c in clock_checks(evidence, set(delayed), list(leases), 2.0) if not c.passed]


def tick(job_id: int, lateness: float) -> StoredJob:
    return stored(job_id, "completed", key=f"periodic:chaos.tick:{job_id}", lateness=lateness)


def test_clocks_on_postgresql_time_pass() -> None:
    jobs = [tick(1, 0.4), stored(2, "completed", due_after=1.0)]
    assert failed_clock_checks(jobs, {"k2"}, [(-3.0, 1.9)]) == []


def test_a_delay_counted_on_a_host_clock_that_is_off_fails() -> None:
    jobs = [tick(1, 0.4), stored(2, "completed", due_after=1801.0)]
    assert failed_clock_checks(jobs, {"k2"}) == [
        "delayed jobs were due 1s after PostgreSQL's now when stored"
    ]


def test_a_tick_enqueued_by_a_host_clock_that_is_off_fails() -> None:
    (failed,) = failed_clock_checks([tick(1, 0.4), tick(2, -1799.6)])
    assert failed.startswith("periodic ticks were enqueued by PostgreSQL's clock")


def test_a_job_whose_failure_moved_its_run_at_tells_nothing_of_clocks() -> None:
    jobs = [tick(1, 0.4), tick(2, -3.0), stored(3, "completed", due_after=3.0)]
    moved = [jobs[0], *(job._replace(failures=1) for job in jobs[1:])]
    assert failed_clock_checks(moved, {"k3"}) == []


def test_no_tick_at_all_fails() -> None:
    (failed,) = failed_clock_checks([])
    assert failed.startswith("periodic ticks")


def test_a_lease_written_on_a_host_clock_that_is_off_fails() -> None:
    for sample in [(0.5, 1801.0), (-1799.0, 1.0)]:
        (failed,) = failed_clock_checks([tick(1, 0.4)], leases=[sample])
        assert failed.startswith("every lease seen in progress")


def test_a_job_asked_to_cancel_while_running_must_end_cancelled() -> None:
    asked = [CancelRequest(1, "http", "in_progress", attempt=1)]
    evidence = Evidence({1: completed(1, 1, "t")}, [(1, 1, 0, None)], [(1, 1, "t")])
    assert failed_checks(evidence, cancels=asked) == [
        "every job completed, or is dead with its budget spent when it always fails"
    ]
    cancelled = Evidence({1: stored(1, "cancelled", cancel_requested=True)}, [(1, 1, 0, None)], [])
    assert failed_checks(cancelled, cancels=asked) == []


def test_a_job_asked_to_cancel_while_running_must_never_start_again() -> None:
    asked = [CancelRequest(1, "python", "in_progress", attempt=1)]
    job = stored(1, "cancelled", 2, cancel_requested=True)
    evidence = Evidence({1: job}, [(1, 1, 0, None), (1, 2, 0, None)], [])
    assert failed_checks(evidence, cancels=asked) == [
        "no job asked to cancel while it ran started again"
    ]


def test_a_cancel_cut_off_by_a_fault_may_have_been_recorded_or_not() -> None:
    unclear = [CancelRequest(1, "http", "unclear")]
    for job in (completed(1, 1, "t"), stored(1, "cancelled")):
        evidence = Evidence({1: job}, [(1, 1, 0, None)], [(1, 1, "t")])
        assert failed_checks(evidence, cancels=unclear) == []


def limits_passed(*limited: tuple[str, str, float, float | None]) -> bool:
    return all(check.passed for check in limit_checks(Evidence({}, [], [], list(limited))))


def test_limited_attempts_within_their_limits_pass() -> None:
    assert limits_passed(
        ("chaos.limited", "", 0.0, 2.0),
        ("chaos.limited", "", 1.0, 3.0),
        ("chaos.limited", "", 2.0, 4.0),  # starts as the first ends: two at once
        ("chaos.keyed", "k1", 0.0, 1.0),
        ("chaos.keyed", "k2", 0.5, 1.5),  # another key: overlaps freely
    )


def test_a_third_limited_attempt_at_once_fails() -> None:
    assert not limits_passed(
        ("chaos.limited", "", 0.0, 2.0),
        ("chaos.limited", "", 1.0, 3.0),
        ("chaos.limited", "", 1.5, 1.6),
    )


def test_two_attempts_of_one_key_at_once_fail() -> None:
    assert not limits_passed(("chaos.keyed", "k1", 0.0, 1.0), ("chaos.keyed", "k1", 0.9, 2.0))


def test_an_attempt_that_neither_finished_nor_was_released_fails() -> None:
    assert not limits_passed(("chaos.limited", "", 0.0, None))


def test_workflow_jobs_that_completed_after_their_parents_pass() -> None:
    evidence = Evidence({}, [], [], dependents=[(4, "completed", True, 10.5, 10.0)])
    assert all(check.passed for check in workflow_checks(evidence, expected=True))


def test_a_workflow_job_that_started_before_its_parents_completed_fails() -> None:
    evidence = Evidence({}, [], [], dependents=[(4, "completed", True, 9.0, 10.0)])
    (check,) = workflow_checks(evidence, expected=True)
    assert not check.passed and "4 completed" in check.detail


def test_a_workflow_job_left_waiting_fails() -> None:
    evidence = Evidence({}, [], [], dependents=[(4, "waiting", True, None, 10.0)])
    (check,) = workflow_checks(evidence, expected=True)
    assert not check.passed


def test_a_profile_with_workflows_that_stored_none_fails() -> None:
    (check,) = workflow_checks(Evidence({}, [], []), expected=True)
    assert not check.passed and "no workflow" in check.detail
