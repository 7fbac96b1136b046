"""Where the chaos harness aims a worker fault: at busy workers, sparing worn jobs."""

from __future__ import annotations

from errands.harness.chaos import SPARED_FROM_ATTEMPT, fair_targets


def test_every_job_a_worker_of_the_daemon_runs_is_a_target() -> None:
    running = [(10, 1, 1), (10, 2, 3), (11, 3, 1)]
    assert fair_targets(running, {10, 11}) == running


def test_a_worker_outside_the_given_set_is_not_a_target() -> None:
    # Workers of a killed supervisor, or one the harness has stopped, are left out.
    assert fair_targets([(10, 1, 1), (12, 2, 1)], {10}) == [(10, 1, 1)]


def test_a_worker_running_a_job_that_lost_half_its_budget_is_spared() -> None:
    running = [(10, 1, SPARED_FROM_ATTEMPT), (10, 2, 1), (11, 3, SPARED_FROM_ATTEMPT - 1)]
    assert fair_targets(running, {10, 11}) == [(11, 3, SPARED_FROM_ATTEMPT - 1)]
