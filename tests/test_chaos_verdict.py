"""The chaos verdict can fail: each check catches the violation it names."""

from __future__ import annotations

from typing import Any

from errands.harness.chaos import Evidence, StoredJob, job_checks


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
    }
    return StoredJob(**{**values, **fields})


def failed_checks(evidence: Evidence, kinds: dict[str, str] | None = None) -> list[str]:
    return [c.name for c in job_checks(evidence, kinds or {}) if not c.passed]


def completed(job_id: int, attempt: int, token: str) -> StoredJob:
    return stored(job_id, "completed", attempt, result={"attempt": attempt, "token": token})


def test_a_clean_record_passes() -> None:
    evidence = Evidence({1: completed(1, 1, "t")}, [(1, 1, None)], [(1, 1, "t")])
    assert failed_checks(evidence) == []


def test_a_result_written_by_an_earlier_attempt_fails_the_fencing_check() -> None:
    # Attempt 2 finished the job, but the stored result came from attempt 1 (a zombie).
    job = stored(1, "completed", 2, result={"attempt": 1, "token": "old"})
    evidence = Evidence({1: job}, [(1, 1, None), (1, 2, None)], [(1, 1, "old"), (1, 2, "new")])
    assert failed_checks(evidence) == [
        "every stored result came from the job's last attempt (fencing)"
    ]


def test_a_result_nobody_recorded_fails_the_fencing_check() -> None:
    evidence = Evidence({1: completed(1, 1, "forged")}, [(1, 1, None)], [(1, 1, "real")])
    assert "every stored result came from the job's last attempt (fencing)" in failed_checks(
        evidence
    )


def test_a_completed_job_that_never_started_fails() -> None:
    evidence = Evidence({1: completed(1, 1, "t")}, [], [(1, 1, "t")])
    assert failed_checks(evidence) == ["every completed job ran at least once"]


def test_a_dead_job_that_should_have_completed_fails() -> None:
    evidence = Evidence({1: stored(1, "dead", 3)}, [(1, 1, None)], [])
    assert failed_checks(evidence) == [
        "every job completed, or is dead with its budget spent when it always fails"
    ]


def test_a_job_that_settled_wrongly_is_named_with_its_task_and_spent_attempts() -> None:
    # What a reader of a failed run needs first: which workload it was and what it spent.
    evidence = Evidence({7: stored(7, "dead", 3, task="chaos.slow")}, [(7, 1, None)], [])
    (check,) = [c for c in job_checks(evidence, {}) if not c.passed]
    assert check.detail == "1: ['7 chaos.slow dead after 3/3 attempts']"


def test_an_always_failing_job_must_end_dead_with_its_budget_spent() -> None:
    kinds = {"k1": "doomed"}
    spent = Evidence({1: stored(1, "dead", 3)}, [(1, 1, None)], [])
    early = Evidence({1: stored(1, "dead", 2)}, [(1, 1, None)], [])
    assert failed_checks(spent, kinds) == []
    assert failed_checks(early, kinds) != []


def test_a_job_left_in_progress_past_its_lease_fails() -> None:
    evidence = Evidence({1: stored(1, "in_progress", lease_expired=True)}, [(1, 1, None)], [])
    assert "nothing stays in progress past its lease" in failed_checks(evidence)
