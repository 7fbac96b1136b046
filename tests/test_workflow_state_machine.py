"""Workflows driven through the real statements by hypothesis (docs/guides/workflows.md).

Random interleavings of enqueues naming random stored parents, claims by two workers,
completions, failures (retried and for good), cancels (waiting, pending and running jobs),
retries of dead and cancelled jobs, and pruning. After every step, against what the test
knows of each job (its parents, what a failed parent does to it, whether it was retried
itself): a job waits exactly while a parent is live; no job ran before its parents
completed (unless told to run after a failed one, or retried by hand); a dead or cancelled
parent has cancelled the waiting jobs it doomed; a retry re-arms the jobs its failure
cancelled; pruning never removes a parent a job not finished still needs.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from errands.queue.admin import cancel, prune, retry
from errands.queue.lease import Completion, Held, complete, complete_and_claim, fail
from errands.queue.requests import parse_request
from errands.queue.submit import enqueue

pytestmark = pytest.mark.slow
OWNERS = ("w1", "w2")
LEASE = 600.0
LIVE = {"waiting", "pending", "failed", "in_progress"}
FAILED = {"dead", "cancelled"}


class WorkflowMachine(RuleBasedStateMachine):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__()
        self.conn = conn
        conn.execute("truncate errands_jobs, errands_finished_counts restart identity")
        self.parents: dict[int, list[int]] = {}  # every job enqueued, by id
        self.runs_anyway: set[int] = set()  # on_parent_failure = 'run'
        self.retried_by_hand: set[int] = set()  # retried with parents: runs whatever they became
        self.held: dict[str, dict[int, int]] = {owner: {} for owner in OWNERS}  # id: attempts

    def _states(self) -> dict[int, tuple[str, int | None]]:
        rows = self.conn.execute("select id, state::text, cancelled_by from errands_jobs")
        return {job_id: (state, cancelled_by) for job_id, state, cancelled_by in rows}

    def _stored(self, data: st.DataObject, states: set[str]) -> int | None:
        ids = sorted(i for i, (state, _) in self._states().items() if state in states)
        return data.draw(st.sampled_from(ids)) if ids else None

    @rule(data=st.data(), parents=st.integers(0, 3), runs_anyway=st.booleans())
    def enqueue_job(self, data: st.DataObject, parents: int, runs_anyway: bool) -> None:
        stored = sorted(self._states())
        after = (
            sorted(data.draw(st.sets(st.sampled_from(stored), max_size=parents))) if stored else []
        )
        request = parse_request(
            {
                "task": "t",
                "after": after or None,
                "on_parent_failure": "run" if runs_anyway else "cancel",
            }
        )
        job = enqueue(self.conn, request).job
        self.parents[job.id] = after
        if runs_anyway:
            self.runs_anyway.add(job.id)

    @rule(owner=st.sampled_from(OWNERS), limit=st.integers(1, 3))
    def claim(self, owner: str, limit: int) -> None:
        for job in complete_and_claim(self.conn, owner, (), ["default"], limit, LEASE).jobs:
            self._ran_after_its_parents(job.id)
            self.held[owner][job.id] = job.attempts

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["complete", "fail", "die"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        owner = data.draw(st.sampled_from([o for o in OWNERS if self.held[o]]))
        job_id = data.draw(st.sampled_from(sorted(self.held[owner])))
        attempts = self.held[owner].pop(job_id)
        if outcome == "complete":
            assert complete(self.conn, owner, [Completion(job_id, attempts, "null")]) == {job_id}
        else:
            held = Held(job_id, attempts)
            permanent = outcome == "die"
            assert fail(self.conn, owner, held, "boom", None, 0.0, permanent=permanent)

    @rule(data=st.data())
    def cancel_job(self, data: st.DataObject) -> None:
        job_id = self._stored(data, LIVE)
        if job_id is not None:
            cancel(self.conn, job_id)

    @rule(data=st.data())
    def retry_job(self, data: st.DataObject) -> None:
        job_id = self._stored(data, FAILED)
        if job_id is None:
            return
        doomed = [i for i, (_, by) in self._states().items() if by == job_id]
        retry(self.conn, job_id)
        if self.parents[job_id]:
            self.retried_by_hand.add(job_id)
        states = self._states()
        for victim in doomed:  # re-armed, unless another parent still dooms it
            state, by = states[victim]
            assert by != job_id, f"job {victim} still cancelled by retried job {job_id}"
            assert state in LIVE or states.get(by or 0, ("", None))[0] in FAILED

    @rule()
    def prune_finished(self) -> None:
        states = self._states()
        # Parents still stored (one pruned while its child was finished stays gone).
        needed = {p for i, (s, _) in states.items() if s in LIVE for p in self.parents[i]}
        needed &= set(states)
        prune(self.conn, retention_seconds=-3600)
        gone = needed - set(self._states())
        assert not gone, f"pruned parents {gone} that jobs not finished still need"

    def _ran_after_its_parents(self, job_id: int) -> None:
        if job_id in self.runs_anyway or job_id in self.retried_by_hand:
            return
        states = self._states()
        for parent in self.parents[job_id]:
            assert states.get(parent, ("completed", None))[0] == "completed", (
                f"job {job_id} claimed while its parent {parent} is {states[parent][0]}"
            )

    @invariant()
    def a_job_waits_exactly_while_a_parent_is_live(self) -> None:
        states = self._states()
        for job_id, (state, _) in states.items():
            live = [p for p in self.parents[job_id] if states.get(p, ("", None))[0] in LIVE]
            if state == "waiting":
                assert live, f"job {job_id} waits for no live parent"
            elif (
                state in {"pending", "failed"}
                and job_id not in self.runs_anyway | self.retried_by_hand
            ):
                assert not live, f"job {job_id} is {state} while parents {live} are live"

    @invariant()
    def a_failed_parent_leaves_no_job_waiting_that_it_dooms(self) -> None:
        states = self._states()
        for job_id, (state, cancelled_by) in states.items():
            failed = [p for p in self.parents[job_id] if states.get(p, ("", None))[0] in FAILED]
            if state == "waiting" and job_id not in self.runs_anyway | self.retried_by_hand:
                assert not failed, f"job {job_id} still waits after parents {failed} failed"
            if cancelled_by is not None:
                assert state == "cancelled" and cancelled_by in self.parents[job_id]


def test_workflows_hand_over_cancel_rearm_and_prune_as_their_graph_says(
    conn: psycopg.Connection[Any],
) -> None:
    run_state_machine_as_test(
        lambda: WorkflowMachine(conn),
        settings=settings(max_examples=100, stateful_step_count=40, deadline=None),
    )
