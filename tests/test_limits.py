"""Limits (docs/guides/limits.md), through the real statements: concurrency per task,
per payload key and per queue, rates, slots given back by every statement that ends an
attempt, fairness across keys, and the limits' own bookkeeping."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from errands import Client, JobState
from errands.queue import control
from errands.queue.jobs import Job
from errands.queue.lease import (
    Completion,
    Held,
    claim,
    complete,
    complete_and_claim,
    complete_in_steps,
    fail,
    reap,
    release,
    reschedule,
)
from errands.queue.requests import JobRequest, QueueLimits
from errands.queue.steps import run
from errands.queue.submit import enqueue_many
from errands.queue.throttles import (
    Rate,
    TaskLimits,
    declare_task_limits,
    forget_idle_counters,
    limits,
    throttled,
)

Conn = psycopg.Connection[Any]
LEASE = 60.0


def claim_all(
    conn: Conn, owner: str = "w1", limit: int = 100, queues: tuple[str, ...] = ("default",)
) -> list[Job]:
    """Claim until a claim finds nothing: a first claim may only make the counters of keys
    it meets for the first time (it says so with recheck_seconds = 0)."""
    claimed: list[Job] = []
    while True:
        answer = complete_and_claim(conn, owner, (), queues, limit - len(claimed), LEASE)
        claimed += answer.jobs
        if not answer.jobs and answer.recheck_seconds != 0.0:
            return claimed


def running(conn: Conn, task: str | None = None) -> int:
    row = conn.execute(
        "select count(*) from errands_jobs where state = 'in_progress'"
        " and (%s::text is null or task = %s)",
        (task, task),
    ).fetchone()
    assert row is not None
    return int(row[0])


def counters(conn: Conn) -> dict[tuple[str, str, str], int]:
    rows = conn.execute("select name, kind, value, running from errands_limit_counters").fetchall()
    return {(name, kind, value): n for name, kind, value, n in rows}


def slots_match_the_jobs(conn: Conn) -> None:
    """Every counter holds exactly the slots of the attempts in progress under it."""
    rows = conn.execute(
        "select c.id, c.running, (select count(*) from errands_jobs j"
        " where j.state = 'in_progress' and c.id = any(j.slots)) from errands_limit_counters c"
    ).fetchall()
    assert all(held == actual for _, held, actual in rows), rows


def one_of_two_claimed_under_a_limit_of_one(conn: Conn, client: Client) -> Job:
    """Two jobs of a task limited to one at once: the first claimed, the other held back."""
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1)})
    client.enqueue("sync")
    client.enqueue("sync")
    (job,) = claim_all(conn)
    return job


def done(jobs: list[Job]) -> list[Completion]:
    return [Completion(j.id, j.attempts, "null") for j in jobs]


# -- concurrency ------------------------------------------------------------------------------


def test_a_task_limit_caps_the_jobs_in_progress_across_owners(conn: Conn, client: Client) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=3)})
    for _ in range(10):
        client.enqueue("sync")
    first = claim_all(conn, "w1")
    second = claim_all(conn, "w2")
    assert (len(first), len(second)) == (3, 0)
    assert running(conn) == 3


def test_held_back_jobs_stay_pending_and_spend_no_attempt(conn: Conn, client: Client) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1)})
    jobs = [client.enqueue("sync") for _ in range(3)]
    claim_all(conn)
    waiting = [client.get(j.id) for j in jobs[1:]]
    assert all(j is not None and (j.state, j.attempts) == (JobState.PENDING, 0) for j in waiting)


def test_a_completion_frees_its_slot_for_the_claim_in_the_same_statement(
    conn: Conn, client: Client
) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=2)})
    for _ in range(4):
        client.enqueue("sync")
    held = claim_all(conn)
    answer = complete_and_claim(conn, "w1", done(held), ("default",), 10, LEASE)
    assert answer.completed.ids == {j.id for j in held}
    assert len(answer.jobs) == 2
    slots_match_the_jobs(conn)


def end_attempt(conn: Conn, job: Job, ending: str) -> None:
    """End the attempt of `job` (held by w1) by one of the statements that end attempts."""
    held = Held(job.id, job.attempts)
    if ending == "complete":
        complete(conn, "w1", done([job]))
    elif ending == "fail":
        fail(conn, "w1", held, "boom", None, retry_in=0)
    elif ending == "reschedule":
        reschedule(conn, "w1", held, "later", retry_in=0)
    elif ending == "release":
        release(conn, "w1")
    else:
        conn.execute(
            "update errands_jobs set lease_expires_at = now() - interval '1 s'"
            " where state = 'in_progress'"
        )
        reap(conn)


@pytest.mark.parametrize("ending", ["complete", "fail", "reschedule", "release", "reap"])
def test_an_attempt_asked_to_cancel_gives_its_slot_back_however_it_ends(
    conn: Conn, client: Client, ending: str
) -> None:
    job = one_of_two_claimed_under_a_limit_of_one(conn, client)
    client.cancel(job.id)  # running: asked to stop, still holding its slot
    assert counters(conn)[("sync", "concurrency", "")] == 1
    end_attempt(conn, job, ending)
    ended = client.get(job.id)
    assert ended is not None and ended.state is JobState.CANCELLED
    assert counters(conn)[("sync", "concurrency", "")] == 0
    assert len(claim_all(conn, "w2")) == 1
    slots_match_the_jobs(conn)


@pytest.mark.parametrize("commits", [True, False])
def test_a_completion_in_the_applications_transaction_frees_the_slot_when_it_commits(
    conn: Conn, client: Client, db_url: str, commits: bool
) -> None:
    job = one_of_two_claimed_under_a_limit_of_one(conn, client)
    with psycopg.connect(db_url) as app:
        handed = run(app, complete_in_steps("w1", Held(job.id, job.attempts), "null", None))
        assert handed.completed
        if commits:
            app.commit()
        else:
            app.rollback()
    assert counters(conn)[("sync", "concurrency", "")] == (0 if commits else 1)
    assert len(claim_all(conn, "w2")) == (1 if commits else 0)
    slots_match_the_jobs(conn)


@pytest.mark.parametrize("ending", ["complete", "fail", "reschedule", "release", "reap"])
def test_every_statement_that_ends_an_attempt_gives_its_slot_back(
    conn: Conn, client: Client, ending: str
) -> None:
    job = one_of_two_claimed_under_a_limit_of_one(conn, client)
    end_attempt(conn, job, ending)
    assert counters(conn)[("sync", "concurrency", "")] == 0
    assert len(claim_all(conn, "w2")) == 1
    slots_match_the_jobs(conn)


def test_cancelling_a_job_that_waits_frees_no_slot(conn: Conn, client: Client) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1)})
    client.enqueue("sync")
    waiting = client.enqueue("sync")
    claim_all(conn)
    client.cancel(waiting.id)
    assert counters(conn)[("sync", "concurrency", "")] == 1
    slots_match_the_jobs(conn)


def test_a_key_limit_lets_keys_overlap_but_never_within_one(conn: Conn, client: Client) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1, concurrency_key="account")})
    for account in ("a", "b", "c", "a", "b"):
        client.enqueue("sync", {"account": account})
    claimed = claim_all(conn)
    assert sorted(j.payload["account"] for j in claimed) == ["a", "b", "c"]


def test_a_batch_is_filed_under_its_limits_as_it_is_stored(conn: Conn, client: Client) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1, concurrency_key="account")})
    client.enqueue_many([{"task": "sync", "payload": {"account": a}} for a in "abcab"])
    filed = conn.execute("select count(*) from errands_jobs where limit_group = ''").fetchone()
    assert filed == (0,)
    claimed = claim_all(conn)
    assert sorted(j.payload["account"] for j in claimed) == ["a", "b", "c"]


def test_a_batch_under_a_limit_is_inserted_filed_never_updated(conn: Conn) -> None:
    """A row updated after COPY would leave its first version's entry among the jobs under no
    limit in the claimable index, which every claim of the queue reads through until a
    vacuum: the batch's jobs are inserted under their groups, one write each."""
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1)})
    with conn.transaction():
        enqueue_many(conn, [JobRequest(task="sync"), JobRequest(task="other")] * 25)
        writes = conn.execute(
            "select n_tup_ins, n_tup_upd from pg_stat_xact_user_tables"
            " where relname = 'errands_jobs'"
        ).fetchone()
    assert writes == (50, 0)
    filed = conn.execute("select limit_group, count(*) from errands_jobs group by 1 order by 1")
    assert filed.fetchall() == [("", 25), ("sync", 25)]


def test_a_key_value_is_its_text(conn: Conn, client: Client) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1, concurrency_key="account")})
    client.enqueue("sync", {"account": 42})
    client.enqueue("sync", {"account": "42"})
    client.enqueue("sync", {})
    client.enqueue("sync", {"account": None})
    # 42 and "42" are one key; a missing argument and null are another (the empty key).
    assert len(claim_all(conn)) == 2


def test_a_queue_limit_caps_every_task_of_the_queue(conn: Conn, client: Client) -> None:
    control.set_limits(conn, "mail", QueueLimits(concurrency=2))
    for task in ("a", "b", "c"):
        client.enqueue(task, queue="mail")
    client.enqueue("d", queue="other")
    assert len(claim_all(conn, queues=("mail", "other"))) == 3  # two of mail, one of other


def test_a_queue_limit_set_while_jobs_wait_files_them_and_holds(conn: Conn, client: Client) -> None:
    for _ in range(5):
        client.enqueue("t", queue="mail")
    control.set_limits(conn, "mail", QueueLimits(concurrency=1))
    assert len(claim_all(conn, queues=("mail",))) == 1


def test_removing_a_queue_limit_lets_the_waiting_jobs_start(conn: Conn, client: Client) -> None:
    control.set_limits(conn, "mail", QueueLimits(concurrency=1))
    for _ in range(3):
        client.enqueue("t", queue="mail")
    assert len(claim_all(conn, queues=("mail",))) == 1
    control.set_limits(conn, "mail", QueueLimits.model_validate({"concurrency": None}))
    assert len(claim_all(conn, queues=("mail",))) == 2


def test_a_job_stored_as_unlimited_while_a_limit_was_declared_is_filed_by_the_claim(
    conn: Conn, client: Client
) -> None:
    for _ in range(4):
        client.enqueue("sync")
    # As if enqueued while the limit was being declared: its group is still ''.
    conn.execute(
        "insert into errands_limits (scope, name, kind, amount, set_by)"
        " values ('task', 'sync', 'concurrency', 2, 'code')"
    )
    answer = complete_and_claim(conn, "w1", (), ("default",), 10, LEASE)
    assert answer.jobs == [] and answer.recheck_seconds == 0.0  # filed, not claimed
    assert len(claim_all(conn)) == 2


def test_lowering_a_limit_lets_running_jobs_finish_and_starts_none_until_below_it(
    conn: Conn, client: Client
) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=3)})
    for _ in range(5):
        client.enqueue("sync")
    held = claim_all(conn)
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1)})
    complete(conn, "w1", done(held[:1]))
    assert claim_all(conn) == []  # two still run: above the new limit of one
    complete(conn, "w1", done(held[1:]))
    assert len(claim_all(conn)) == 1


@pytest.mark.parametrize("key", ["k", None], ids=["per key", "one limit"])
def test_racing_claims_never_put_more_in_progress_than_the_limit(
    db_url: str, conn: Conn, client: Client, key: str | None
) -> None:
    """Per key, claims take the general path; under one limit alone, the short one, whose
    claims take back the slots their completions free without locking the counter."""
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=3, concurrency_key=key)})
    client.enqueue_many([{"task": "sync", "payload": {"k": n % 2}} for n in range(300)])
    seen: list[int] = []
    stop = threading.Event()
    count = (
        "select count(*) from errands_jobs where state = 'in_progress' group by payload->>'k'"
        if key
        else "select count(*) from errands_jobs where state = 'in_progress'"
    )

    def watch() -> None:  # each count is one statement's snapshot: never more than allowed
        with psycopg.connect(db_url, autocommit=True) as watcher:
            while not stop.is_set():
                rows = watcher.execute(count).fetchall()
                seen.extend(n for (n,) in rows)

    def work(owner: str) -> None:
        with psycopg.connect(db_url, autocommit=True) as own:
            held: list[Job] = []
            for _ in range(60):
                answer = complete_and_claim(own, owner, done(held), ("default",), 4, LEASE)
                held = answer.jobs

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(6)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    watcher.join()
    assert seen and max(seen) <= 3
    slots_match_the_jobs(conn)


# -- rates ------------------------------------------------------------------------------------


def test_a_rate_caps_the_starts_of_a_period_and_says_when_the_next_may_start(
    conn: Conn, client: Client
) -> None:
    declare_task_limits(conn, {"mail": TaskLimits(rate=Rate(3, 3600))})
    for _ in range(5):
        client.enqueue("mail")
    held = claim_all(conn)
    assert len(held) == 3
    complete(conn, "w1", done(held))  # finishing frees no start: the period does
    answer = complete_and_claim(conn, "w1", (), ("default",), 10, LEASE)
    assert answer.jobs == []
    assert answer.recheck_seconds is not None and 3590 < answer.recheck_seconds <= 3600


def test_a_rate_counts_any_window_of_its_period(conn: Conn, client: Client) -> None:
    declare_task_limits(conn, {"mail": TaskLimits(rate=Rate(2, 1))})
    for _ in range(6):
        client.enqueue("mail")
    starts: list[float] = []
    deadline = time.monotonic() + 10
    while len(starts) < 6 and time.monotonic() < deadline:
        answer = complete_and_claim(conn, "w1", (), ("default",), 10, LEASE)
        starts += [j.started_at.timestamp() for j in answer.jobs if j.started_at]
        time.sleep(min(answer.recheck_seconds or 0.05, 0.2))
    starts.sort()
    assert len(starts) == 6
    # No window of one second holds a third start: each start's second-before holds two.
    assert all(later - earlier >= 1.0 for earlier, later in zip(starts, starts[2:], strict=False))


def test_a_per_key_rate_is_per_value(conn: Conn, client: Client) -> None:
    declare_task_limits(conn, {"mail": TaskLimits(rate=Rate(1, 3600), rate_key="to")})
    for to in ("a", "a", "b"):
        client.enqueue("mail", {"to": to})
    assert sorted(j.payload["to"] for j in claim_all(conn)) == ["a", "b"]


# -- fairness ---------------------------------------------------------------------------------


def test_a_key_with_a_long_backlog_does_not_starve_one_with_a_few(
    conn: Conn, client: Client
) -> None:
    declare_task_limits(conn, {"import": TaskLimits(concurrency=5, concurrency_key="tenant")})
    backlog = [{"task": "import", "payload": {"tenant": "big"}} for _ in range(10_000)]
    for first in range(0, len(backlog), 1000):
        client.enqueue_many(backlog[first : first + 1000])
    for _ in range(3):
        client.enqueue("import", {"tenant": "small"})
    claimed = claim_all(conn, limit=32)
    tenants = sorted(j.payload["tenant"] for j in claimed)
    assert tenants == ["big"] * 5 + ["small"] * 3


def test_keys_are_served_in_turn_when_slots_are_scarce(conn: Conn, client: Client) -> None:
    """Limits that do not bind: one free slot at a time goes to the least recently served key,
    not to the oldest job."""
    declare_task_limits(conn, {"import": TaskLimits(concurrency=100, concurrency_key="tenant")})
    client.enqueue_many([{"task": "import", "payload": {"tenant": "big"}} for _ in range(20)])
    client.enqueue_many([{"task": "import", "payload": {"tenant": "small"}} for _ in range(3)])
    claim_all(conn, limit=1)  # makes both counters (a first claim meets both keys)
    order = []
    held: list[Job] = []
    for _ in range(6):
        answer = complete_and_claim(conn, "w1", done(held), ("default",), 1, LEASE)
        held = answer.jobs
        order += [j.payload["tenant"] for j in held]
    assert order.count("small") == 3 and "small" in order[:2]


# -- bookkeeping ------------------------------------------------------------------------------


def test_declared_limits_are_written_changed_and_dropped_and_operator_limits_kept(
    conn: Conn,
) -> None:
    control.set_limits(conn, "mail", QueueLimits(rate=Rate(20, 1)))
    assert declare_task_limits(conn, {"sync": TaskLimits(concurrency=2)}) == ["sync"]
    assert declare_task_limits(conn, {"sync": TaskLimits(concurrency=2)}) == []  # unchanged
    declare_task_limits(conn, {"sync": TaskLimits(rate=Rate(5, 60), rate_key="k")})
    shown = {(lim.scope, lim.name, lim.kind): lim for lim in limits(conn)}
    assert set(shown) == {("task", "sync", "rate"), ("queue", "mail", "rate")}
    assert (shown["task", "sync", "rate"].value, shown["task", "sync", "rate"].key) == ("5/m", "k")
    assert shown["queue", "mail", "rate"].set_by == "operator"


def test_queues_show_their_limits_use_and_jobs_held_back(conn: Conn, client: Client) -> None:
    control.set_limits(conn, "mail", QueueLimits(concurrency=1, rate=Rate(10, 60)))
    for _ in range(3):
        client.enqueue("t", queue="mail")
    claim_all(conn, queues=("mail",))
    (mail,) = control.queues(conn)
    assert (mail.concurrency, mail.concurrency_in_use, mail.rate, mail.rate_in_use) == (
        1,
        1,
        "10/m",
        1,
    )
    assert mail.throttled == 2 == throttled(conn)["mail"]


def test_idle_counters_are_forgotten_and_made_again(conn: Conn, client: Client) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1, concurrency_key="k")})
    client.enqueue("sync", {"k": "a"})
    (job,) = claim_all(conn)
    assert forget_idle_counters(conn, idle_seconds=0) == 0  # a slot is held
    complete(conn, "w1", done([job]))
    conn.execute("update errands_limit_counters set served_at = now() - interval '2 hours'")
    assert forget_idle_counters(conn, idle_seconds=3600) == 1
    client.enqueue("sync", {"k": "a"})
    assert len(claim_all(conn)) == 1


def test_rates_are_written_as_they_are_read() -> None:
    assert [str(Rate.parse(t)) for t in ("30/m", "1/s", "1000000/h")] == [
        "30/m",
        "1/s",
        "1000000/h",
    ]
    for bad in ("0/s", "30/d", "30 /m", "1000001/h", "-1/s", "/m"):
        with pytest.raises(ValueError, match="N/s, N/m or N/h"):
            Rate.parse(bad)


def test_the_first_claim_of_a_key_makes_its_counter_and_asks_for_another(
    conn: Conn, client: Client
) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1, concurrency_key="k")})
    client.enqueue("sync", {"k": "new"})
    first = claim(conn, "w1", ("default",), 5, LEASE)
    assert first == [] and ("sync", "concurrency", "new") in counters(conn)
    assert len(claim(conn, "w1", ("default",), 5, LEASE)) == 1


def test_a_group_filed_under_limits_no_longer_in_force_is_filed_anew_by_a_claim(
    conn: Conn, client: Client
) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1, concurrency_key="account")})
    for region in ("eu", "eu", "us"):
        client.enqueue("sync", {"account": "a", "region": region})
    # The key argument changes without the jobs being filed anew (as if stored meanwhile).
    conn.execute("update errands_limits set key = 'region' where name = 'sync'")
    answer = complete_and_claim(conn, "w1", (), ("default",), 10, LEASE)
    assert answer.jobs == [] and answer.recheck_seconds == 0.0
    assert sorted(j.payload["region"] for j in claim_all(conn)) == ["eu", "us"]


def test_a_claim_taking_back_the_slots_it_frees_does_not_wait_for_the_counter(
    db_url: str, conn: Conn, client: Client
) -> None:
    """A full limit's claims that only refill what their completions free leave the counter
    unread and unwritten: they do not queue behind one another's commits."""
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=2)})
    for _ in range(4):
        client.enqueue("sync")
    held = claim_all(conn, "w1")
    with psycopg.connect(db_url) as other:
        other.execute("select from errands_limit_counters for update")  # held until rollback
        conn.execute("set lock_timeout = '100ms'")  # waiting for `other` would raise
        answer = complete_and_claim(conn, "w1", done(held), ("default",), 2, LEASE)
        conn.execute("reset lock_timeout")
        other.rollback()
    assert answer.completed.ids == {j.id for j in held}
    assert len(answer.jobs) == 2
    assert counters(conn) == {("sync", "concurrency", ""): 2}
    slots_match_the_jobs(conn)


def test_a_refill_finding_fewer_jobs_than_it_frees_gives_the_other_slots_back(
    conn: Conn, client: Client
) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=2)})
    for _ in range(3):
        client.enqueue("sync")
    held = claim_all(conn, "w1")
    answer = complete_and_claim(conn, "w1", done(held), ("default",), 2, LEASE)
    assert len(answer.jobs) == 1
    assert counters(conn) == {("sync", "concurrency", ""): 1}
    slots_match_the_jobs(conn)


def test_a_freed_slot_that_jobs_wait_for_wakes_idle_workers_once(
    db_url: str, conn: Conn, client: Client
) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1)})
    client.enqueue("sync")
    client.enqueue("sync")
    (job,) = claim_all(conn, "w1")
    assert claim_all(conn, "w2") == []  # w2 found the limit full: it marks it waited for
    with psycopg.connect(db_url, autocommit=True) as idle:
        idle.execute("listen errands_jobs")
        fail(conn, "w1", Held(job.id, job.attempts), "boom", None, retry_in=3600)
        assert [n.channel for n in idle.notifies(timeout=2, stop_after=1)] == ["errands_jobs"]
    waiting = conn.execute("select waiting from errands_limit_counters").fetchone()
    assert waiting == (False,)  # woken once; the next claim that finds it full marks it again


def test_a_worker_that_refills_the_slots_it_frees_wakes_nobody(
    db_url: str, conn: Conn, client: Client
) -> None:
    declare_task_limits(conn, {"sync": TaskLimits(concurrency=1)})
    for _ in range(3):
        client.enqueue("sync")
    (job,) = claim_all(conn, "w1")
    claim_all(conn, "w2")
    with psycopg.connect(db_url, autocommit=True) as idle:
        idle.execute("listen errands_jobs")
        answer = complete_and_claim(conn, "w1", done([job]), ("default",), 1, LEASE)
        assert len(answer.jobs) == 1
        assert list(idle.notifies(timeout=0.5, stop_after=1)) == []
