"""Claims under limits, driven through the real statements by hypothesis (README: Limits and
unique jobs).

Random interleavings of enqueues, claims by several workers (alone, or in the statement
that completes some of the worker's jobs, as workers claim), completions, failures,
reschedules, releases of a dead worker's jobs, lease expiries and reaps, cancels, and an
operator setting and removing a queue limit. After every step: each counter holds exactly
the slots of the attempts in progress under it; no claim took a job past a limit that was
full; the rate's starts stay within it; and a claim that found nothing left no job behind
that a limit would have let start (nothing is stranded).

The task limits never change here, so every job of those tasks in progress started under
them and counts. The queue limit comes and goes: jobs started while it was off hold no
slot of it, and it counts only the jobs started under it (docs/guides/limits.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from errands.queue import control
from errands.queue.admin import cancel
from errands.queue.jobs import Job, JobState
from errands.queue.lease import (
    Completion,
    Held,
    complete,
    complete_and_claim,
    fail,
    reap,
    release,
    reschedule,
)
from errands.queue.requests import QueueLimits, parse_request
from errands.queue.submit import enqueue
from errands.queue.throttles import Rate, TaskLimits, declare_task_limits

pytestmark = pytest.mark.slow
OWNERS = ("w1", "w2", "w3")
QUEUES = ("q1", "q2")
# Never a sync job here (their rate keeps some waiting): report's group is often alone in it,
# which its claims serve by a short path, taking back their own freed slots unlocked.
REPORTS = "q3"
CLAIMED = (("q1",), ("q2",), (REPORTS,), (*QUEUES, REPORTS))
KEYS = ("k1", "k2", "k3")
LEASE = 600.0
# sync: 2 at once per account, 4 starts an hour in all; report: 2 at once; q1: 3 at once.
DECLARED = {
    "sync": TaskLimits(concurrency=2, concurrency_key="account", rate=Rate(4, 3600)),
    "report": TaskLimits(concurrency=2),
}
Q1_LIMIT = 3

# Every limit a job comes under, as (name, key value) pairs the queries below count by.
LIMITS_OF = """
select job.id, array_agg(l.name || ':' || l.kind || ':' || l.value order by l.name, l.kind)
from errands_jobs as job
cross join lateral errands_limits_of(job.queue, job.task, job.payload) as l
where job.state = any(%s::errands_job_state[])
group by job.id
"""


# The queue limit's slots held, by the jobs' own record of the slots they hold.
Q1_HELD = """
select count(*) from errands_jobs as job
join errands_limit_counters as c on c.id = any(job.slots)
where job.state = 'in_progress' and (c.scope, c.name) = ('queue', 'q1')
"""


def _in_progress_by_limit(conn: psycopg.Connection[Any]) -> Counter[str]:
    """Jobs in progress per concurrency limit and key: by the task limits they come under,
    and, for q1's limit, by the slots they hold."""
    counted: Counter[str] = Counter()
    for _, limits in conn.execute(LIMITS_OF, (["in_progress"],)).fetchall():
        counted.update(limit for limit in limits if ":concurrency:" in limit and "q1:" not in limit)
    row = conn.execute(Q1_HELD).fetchone()
    counted["q1:concurrency:"] = row[0] if row else 0
    return counted


T = TypeVar("T")


def pick(data: st.DataObject, items: Sequence[T]) -> T:
    """One of `items` (the state's: jobs, leases, owners), by an index drawn from a fixed range.

    A draw whose range followed the state broke hypothesis's replay once in a CI rehearsal
    (a loaded machine): the same steps had left a list one element longer, and hypothesis
    refused the run (FlakyStrategyDefinition) before any invariant was checked. Which
    element the index picks still follows the state; every invariant is checked as before.
    """
    return items[data.draw(st.integers(0, 255)) % len(items)]


class LimitedQueueMachine(RuleBasedStateMachine):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__()
        self.conn = conn
        conn.execute(
            "truncate errands_jobs, errands_finished_counts, errands_limits,"
            " errands_limit_counters, errands_queues restart identity"
        )
        declare_task_limits(conn, DECLARED)
        self.q1_limited = False
        self.leases: dict[str, set[Held]] = {owner: set() for owner in OWNERS}
        self.sync_starts = 0

    def _amounts(self) -> dict[str, int]:
        """Concurrency amounts in force now, by the limit names of LIMITS_OF (per value)."""
        amounts = {"sync:concurrency": 2, "report:concurrency": 2}
        if self.q1_limited:
            amounts["q1:concurrency"] = Q1_LIMIT
        return amounts

    def _claim(
        self, owner: str, queues: tuple[str, ...], limit: int, done: tuple[Held, ...] = ()
    ) -> list[Job]:
        before = _in_progress_by_limit(self.conn)
        completions = [Completion(held.id, held.attempts, "null") for held in done]
        answer = complete_and_claim(self.conn, owner, completions, queues, limit, LEASE)
        self.leases[owner] -= set(done)
        after = _in_progress_by_limit(self.conn)
        amounts = self._amounts()
        for limit_key, count in after.items():
            amount = amounts.get(limit_key.rsplit(":", 1)[0])
            if amount is not None and count > before[limit_key]:
                assert count <= amount, f"a claim took {limit_key} to {count} (limit {amount})"
        for job in answer.jobs:
            assert job.queue in queues and job.state is JobState.IN_PROGRESS
            self.leases[owner].add(Held(job.id, job.attempts))
            self.sync_starts += job.task == "sync"
        if not answer.jobs and answer.recheck_seconds != 0.0:
            self._nothing_stranded(queues)
        return answer.jobs

    def _nothing_stranded(self, queues: tuple[str, ...]) -> None:
        """Every due job of `queues` left waiting comes under a limit that is full."""
        running = _in_progress_by_limit(self.conn)
        amounts = self._amounts()
        waiting = self.conn.execute(
            LIMITS_OF.replace("where", "where job.queue = any(%s) and job.run_at <= now() and"),
            (list(queues), ["pending", "failed"]),
        ).fetchall()
        waiting_ids = {
            row[0]
            for row in self.conn.execute(
                "select id from errands_jobs where queue = any(%s) and run_at <= now()"
                " and state in ('pending', 'failed')",
                (list(queues),),
            )
        }
        limited_ids = {job_id for job_id, _ in waiting}
        assert waiting_ids <= limited_ids, (
            f"unlimited jobs left waiting: {waiting_ids - limited_ids}"
        )
        for job_id, limits in waiting:
            full = [
                limit
                for limit in limits
                if (":rate:" in limit and self.sync_starts >= 4)
                or running[limit] >= amounts.get(limit.rsplit(":", 1)[0], 10**9)
            ]
            assert full, f"job {job_id} waits although none of {limits} is full"

    # -- rules -----------------------------------------------------------------------------

    @initialize(
        jobs=st.lists(
            st.tuples(
                st.sampled_from(("sync", "report", "plain")),
                st.sampled_from(QUEUES),
                st.sampled_from(KEYS),
            ),
            max_size=6,
        )
    )
    def seed(self, jobs: list[tuple[str, str, str]]) -> None:
        for task, queue, key in jobs:
            self.enqueue(task, queue, key)

    @rule(
        task=st.sampled_from(("sync", "report", "plain")),
        queue=st.sampled_from(QUEUES),
        key=st.sampled_from(KEYS),
    )
    def enqueue(self, task: str, queue: str, key: str) -> None:
        request = parse_request({"task": task, "queue": queue, "payload": {"account": key}})
        enqueue(self.conn, request)

    @rule(task=st.sampled_from(("report", "report", "plain")))
    def enqueue_without_sync(self, task: str) -> None:
        self.enqueue(task, REPORTS, "k1")

    @rule(
        owner=st.sampled_from(OWNERS),
        queues=st.sampled_from(CLAIMED),
        limit=st.integers(1, 4),
    )
    def claim(self, owner: str, queues: tuple[str, ...], limit: int) -> None:
        self._claim(owner, queues, limit)

    @precondition(lambda self: any(self.leases.values()))
    @rule(
        data=st.data(),
        queues=st.sampled_from(CLAIMED),
        limit=st.integers(1, 4),
    )
    def finish_some_and_claim(
        self, data: st.DataObject, queues: tuple[str, ...], limit: int
    ) -> None:
        """A worker's usual statement: its finished jobs completed, their slots taken back."""
        owner = pick(data, [o for o in OWNERS if self.leases[o]])
        held = sorted(self.leases[owner], key=lambda h: (h.id, h.attempts))
        first, count = pick(data, range(len(held))), data.draw(st.integers(1, 8))
        done = [held[(first + n) % len(held)] for n in range(min(count, len(held)))]
        self._claim(owner, queues, limit, tuple(done))

    @precondition(lambda self: any(self.leases.values()))
    @rule(data=st.data(), outcome=st.sampled_from(("complete", "fail", "reschedule")))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        owner = pick(data, [o for o in OWNERS if self.leases[o]])
        lease = pick(data, sorted(self.leases[owner], key=lambda h: (h.id, h.attempts)))
        self.leases[owner].discard(lease)
        if outcome == "complete":
            complete(self.conn, owner, [Completion(lease.id, lease.attempts, "null")])
        elif outcome == "fail":
            fail(self.conn, owner, lease, "boom", None, retry_in=0)
        else:
            reschedule(self.conn, owner, lease, "later", retry_in=0)

    @rule(owner=st.sampled_from(OWNERS))
    def worker_dies(self, owner: str) -> None:
        release(self.conn, owner)
        self.leases[owner].clear()

    @rule(owner=st.sampled_from(OWNERS))
    def lease_expires(self, owner: str) -> None:
        self.conn.execute(
            "update errands_jobs set lease_expires_at = now() - interval '1 s'"
            " where state = 'in_progress' and lease_owner = %s",
            (owner,),
        )
        assert reap(self.conn) is not None
        self.leases[owner].clear()

    @rule(data=st.data())
    def cancel_waiting(self, data: st.DataObject) -> None:
        # In id order: rows come back in the order the heap holds them, which updates and
        # vacuum change between hypothesis's runs of the same steps.
        ids = [
            r[0]
            for r in self.conn.execute(
                "select id from errands_jobs where state = 'pending' order by id"
            )
        ]
        if ids:
            cancel(self.conn, pick(data, ids))

    @rule(limited=st.booleans())
    def operator_sets_q1(self, limited: bool) -> None:
        control.set_limits(
            self.conn,
            "q1",
            QueueLimits.model_validate({"concurrency": Q1_LIMIT if limited else None}),
        )
        self.q1_limited = limited

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def every_counter_holds_exactly_the_slots_of_running_attempts(self) -> None:
        rows = self.conn.execute(
            "select c.name, c.value, c.running, (select count(*) from errands_jobs j"
            " where j.state = 'in_progress' and c.id = any(j.slots)) from errands_limit_counters c"
        ).fetchall()
        assert all(held == actual for _, _, held, actual in rows), rows

    @invariant()
    def the_rate_is_never_exceeded(self) -> None:
        assert self.sync_starts <= 4

    @invariant()
    def held_back_jobs_spent_no_attempt_for_it(self) -> None:
        # A waiting job spent an attempt per claim that started it, none per claim that passed
        # it by: each started attempt that ended without completing left an error entry.
        rows = self.conn.execute(
            "select count(*) from errands_jobs where state = 'pending'"
            " and attempts > jsonb_array_length(errors)"
        ).fetchone()
        assert rows is not None and rows[0] == 0


def test_claims_under_limits_never_exceed_them_nor_strand_a_job(
    conn: psycopg.Connection[Any],
) -> None:
    run_state_machine_as_test(
        lambda: LimitedQueueMachine(conn),
        settings=settings(max_examples=150, stateful_step_count=40),
    )
