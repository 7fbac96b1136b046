"""Submitting jobs: one, many, idempotently, and inside the caller's transaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import errands
from errands import Client, IdempotencyConflict, JobState
from errands.queue.queries import query
from errands.queue.requests import parse_request
from tests.clients import AppConnect, Portal, blocking_client, closing
from tests.clients import either_app_connect as app_connect
from tests.clients import either_client as client
from tests.test_validation import json_text, json_values

__all__ = ["app_connect", "client"]  # each test runs with both clients: tests/clients.py


def count_jobs(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from errands_jobs").fetchone()
    assert row is not None
    return int(row[0])


def test_enqueue_stores_a_pending_job_with_defaults(client: Client) -> None:
    job = client.enqueue("send_email", {"to": "a@example.com"})
    assert job.state is JobState.PENDING
    assert (job.queue, job.priority, job.attempts, job.max_attempts) == ("default", 0, 0, 5)
    assert job.payload == {"to": "a@example.com"}
    assert client.get(job.id) == job


def test_enqueue_keeps_every_field_given(client: Client) -> None:
    run_at = datetime(2030, 1, 1, tzinfo=UTC)
    job = client.enqueue(
        "report", {"rows": 3}, queue="reports", priority=7, run_at=run_at, max_attempts=2
    )
    assert (job.queue, job.priority, job.run_at, job.max_attempts) == ("reports", 7, run_at, 2)


def test_enqueue_returns_the_job_as_stored(client: Client) -> None:
    # The statement sends back only what the request cannot say (errands_enqueue_job).
    jobs = [
        client.enqueue("t", {"b": 2, "a": [1.5, None], "n": 1e23}, priority=3, delay=2.5),
        client.enqueue("t", run_at=datetime(2030, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))),
        client.enqueue("t", queue="q", max_attempts=2, idempotency_key="k"),
    ]
    # As the database gives them back, down to each timestamp's offset and the payload's order.
    assert [job.to_dict() for job in jobs] == [client.get(job.id).to_dict() for job in jobs]
    assert list(jobs[0].payload) == list(client.get(jobs[0].id).payload) == ["a", "b", "n"]


def test_delay_schedules_the_job_in_the_future(client: Client) -> None:
    job = client.enqueue("report", delay=timedelta(minutes=5))
    assert job.run_at - job.created_at >= timedelta(minutes=4)


def test_same_key_and_request_returns_the_stored_job(client: Client, conn: Any) -> None:
    first = client.enqueue("send_email", {"to": "a"}, idempotency_key="k1")
    again = client.enqueue("send_email", {"to": "a"}, idempotency_key="k1")
    assert again.id == first.id
    assert count_jobs(conn) == 1


def test_same_key_with_another_payload_is_a_conflict(client: Client, conn: Any) -> None:
    client.enqueue("send_email", {"to": "a"}, idempotency_key="k1")
    with pytest.raises(IdempotencyConflict):
        client.enqueue("send_email", {"to": "b"}, idempotency_key="k1")
    assert count_jobs(conn) == 1


def test_same_key_with_another_task_or_queue_is_a_conflict(client: Client) -> None:
    client.enqueue("send_email", {}, idempotency_key="k1")
    with pytest.raises(IdempotencyConflict):
        client.enqueue("other", {}, idempotency_key="k1")
    with pytest.raises(IdempotencyConflict):
        client.enqueue("send_email", {}, queue="q2", idempotency_key="k1")


def test_a_key_blocks_new_jobs_even_after_its_job_finished(client: Client, conn: Any) -> None:
    job = client.enqueue("send_email", {}, idempotency_key="k1")
    client.cancel(job.id)
    assert client.enqueue("send_email", {}, idempotency_key="k1").id == job.id
    assert count_jobs(conn) == 1


def test_the_index_that_keeps_keys_unique_holds_only_jobs_with_a_key(conn: Any) -> None:
    # Every claim and completion rewrites its job into each index the job is in: a
    # keyless job must not be in this one (migration 0019).
    (definition,) = conn.execute(
        "select pg_get_indexdef(i.indexrelid) from pg_index as i"
        " join pg_attribute as a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]"
        " where i.indrelid = 'errands_jobs'::regclass and i.indisunique"
        " and a.attname = 'idempotency_key'"
    ).fetchall()
    assert definition[0].endswith("WHERE (idempotency_key IS NOT NULL)")


def test_enqueue_many_stores_all_jobs_in_order(client: Client) -> None:
    jobs = client.enqueue_many([{"task": "t", "payload": {"n": n}} for n in range(50)])
    assert [job.payload["n"] for job in jobs] == list(range(50))
    assert [job.id for job in jobs] == sorted(job.id for job in jobs)


def test_enqueue_many_replays_stored_keys(client: Client, conn: Any) -> None:
    stored = client.enqueue("t", {"n": 1}, idempotency_key="k1")
    jobs = client.enqueue_many(
        [
            {"task": "t", "payload": {"n": 0}},
            {"task": "t", "payload": {"n": 1}, "idempotency_key": "k1"},
        ]
    )
    assert jobs[1].id == stored.id
    assert count_jobs(conn) == 2


def test_enqueue_many_is_all_or_nothing_on_a_conflict(client: Client, conn: Any) -> None:
    client.enqueue("t", {"n": 1}, idempotency_key="k1")
    with pytest.raises(IdempotencyConflict):
        client.enqueue_many(
            [
                {"task": "t", "payload": {"n": 0}},
                {"task": "t", "payload": {"n": 2}, "idempotency_key": "k1"},
            ]
        )
    assert count_jobs(conn) == 1


def test_enqueue_many_is_all_or_nothing_on_an_invalid_spec(client: Client, conn: Any) -> None:
    with pytest.raises(errands.InvalidJob) as raised:
        client.enqueue_many([{"task": "ok"}, {"task": "not ok"}])
    assert [e.field for e in raised.value.errors] == ["[1].task"]
    assert count_jobs(conn) == 0


def test_a_key_repeated_within_one_batch_makes_one_job(client: Client, conn: Any) -> None:
    jobs = client.enqueue_many([{"task": "t", "idempotency_key": "k"}] * 3)
    assert len({job.id for job in jobs}) == 1
    assert count_jobs(conn) == 1


def test_enqueue_in_a_rolled_back_transaction_leaves_no_job(
    client: Client, db_url: str, app_connect: AppConnect
) -> None:
    with app_connect(db_url) as app_conn:
        client.enqueue("send_email", {}, conn=app_conn)
        client.enqueue_many([{"task": "a"}, {"task": "b"}], conn=app_conn)
        app_conn.rollback()
    assert client.list() == []


def test_enqueue_in_a_committed_transaction_stores_the_job(
    client: Client, db_url: str, app_connect: AppConnect
) -> None:
    with app_connect(db_url) as app_conn:
        job = client.enqueue("send_email", {}, conn=app_conn)
        app_conn.commit()
    assert client.get(job.id) is not None


def test_enqueue_on_the_callers_connection_opens_none_of_its_own(
    client: Client, client_kind: str, db_url: str, app_connect: AppConnect, portal: Portal
) -> None:
    unused_url = "postgresql://nobody@127.0.0.1:1/nothing"  # refused, were it used
    nowhere = blocking_client(client_kind, unused_url, portal)
    with closing(nowhere), app_connect(db_url) as app_conn:
        job = nowhere.enqueue("send_email", {}, conn=app_conn)
        [batch_job] = nowhere.enqueue_many([{"task": "a"}], conn=app_conn)
        app_conn.commit()
    assert [j.id for j in client.list()] == [batch_job.id, job.id]


def test_enqueue_notifies_listeners_of_its_queue(client: Client, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen errands_jobs")
        client.enqueue("send_email", {}, queue="mail")
        note = next(listener.notifies(timeout=5))
    assert (note.channel, note.payload) == ("errands_jobs", "mail")


def test_registered_task_supplies_queue_and_budget_defaults(client: Client) -> None:
    @errands.task("registered_for_defaults", queue="mail", max_attempts=9)
    def send(to: str) -> None: ...

    job = client.enqueue("registered_for_defaults", {"to": "x"})
    assert (job.queue, job.max_attempts) == ("mail", 9)
    assert client.enqueue("registered_for_defaults", queue="other").queue == "other"


def pruning_after(
    statement_name: str, db_url: str, job_id: int, app_connect: AppConnect, client_kind: str
) -> Any:
    """A connection that deletes a job right after the named statement has run: a prune
    landing between an enqueue's insert, which found the job's key taken, and its read of
    that job."""

    def prune_if_named(statement: Any) -> None:
        if statement == query(statement_name):
            with psycopg.connect(db_url, autocommit=True) as pruner:
                pruner.execute("delete from errands_jobs where id = %s", (job_id,))

    class PrunedMidway(psycopg.Cursor[Any]):
        def execute(self, statement: Any, params: Any = None, **kwargs: Any) -> PrunedMidway:
            super().execute(statement, params, **kwargs)
            prune_if_named(statement)
            return self

    class PrunedMidwayAsync(psycopg.AsyncCursor[Any]):
        async def execute(
            self, statement: Any, params: Any = None, **kwargs: Any
        ) -> PrunedMidwayAsync:
            await super().execute(statement, params, **kwargs)
            prune_if_named(statement)
            return self

    cursor = PrunedMidway if client_kind == "Client" else PrunedMidwayAsync
    return app_connect(db_url, autocommit=True, cursor_factory=cursor)


def test_a_key_whose_job_is_pruned_between_the_insert_and_the_read_is_stored_anew(
    client: Client, client_kind: str, db_url: str, app_connect: AppConnect
) -> None:
    stored = client.enqueue("t", idempotency_key="k")
    with pruning_after("enqueue", db_url, stored.id, app_connect, client_kind) as app_conn:
        job = client.enqueue("t", idempotency_key="k", conn=app_conn)
    assert job.id != stored.id
    assert client.get(job.id).idempotency_key == "k"


def test_a_batch_whose_keyed_job_is_pruned_midway_stores_it_anew(
    client: Client, client_kind: str, db_url: str, app_connect: AppConnect
) -> None:
    stored = client.enqueue("t", idempotency_key="k")
    with pruning_after("enqueue_staged", db_url, stored.id, app_connect, client_kind) as app_conn:
        jobs = client.enqueue_many(
            [{"task": "t"}, {"task": "t", "idempotency_key": "k"}], conn=app_conn
        )
    assert stored.id not in [job.id for job in jobs]
    assert [client.get(job.id).idempotency_key for job in jobs] == [None, "k"]


def test_a_replay_matches_numbers_by_value_as_the_database_stores_them(
    client: Client, conn: Any
) -> None:
    first = client.enqueue("t", {"n": 1e23}, idempotency_key="big")
    assert client.enqueue("t", {"n": 1e23}, idempotency_key="big").id == first.id
    assert (
        client.enqueue_many([{"task": "t", "payload": {"n": 1e23}, "idempotency_key": "big"}])[0].id
        == first.id
    )


def test_a_key_repeated_in_a_batch_with_another_payload_is_a_conflict_naming_no_job(
    client: Client, conn: Any
) -> None:
    # The first copy was never stored: the conflict names the two copies, not a job id.
    with pytest.raises(IdempotencyConflict, match=r"\[0\] and \[1\] of the batch") as raised:
        client.enqueue_many(
            [
                {"task": "t", "idempotency_key": "k"},
                {"task": "t", "payload": {"x": 1}, "idempotency_key": "k"},
            ]
        )
    assert raised.value.job_id is None
    assert count_jobs(conn) == 0


def test_enqueue_many_returns_every_job_as_stored(client: Client) -> None:
    stored = client.enqueue("t", {"n": 1}, idempotency_key="old")
    jobs = client.enqueue_many(
        [
            {"task": "t", "payload": {"b": 2, "a": [1.5, None]}, "priority": 3},
            {"task": "t", "queue": "q", "idempotency_key": "new", "max_attempts": 2},
            {"task": "t", "payload": {"n": 1}, "idempotency_key": "old"},
            {"task": "t", "run_at": datetime(2030, 1, 1, tzinfo=UTC)},
            {"task": "t", "run_at": datetime(2030, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))},
            {"task": "t", "payload": {"n": 1e23, "z": {"x": (1, 2)}}},
        ]
    )
    # As the database would give them back, down to each timestamp's offset.
    assert [job.to_dict() for job in jobs] == [client.get(job.id).to_dict() for job in jobs]
    assert jobs[2] == client.get(stored.id)


def test_a_batch_without_keys_returns_every_job_as_stored(client: Client) -> None:
    # Straight into the jobs table by COPY, which returns nothing: each job is the request,
    # its drawn id and the transaction's time.
    jobs = client.enqueue_many(
        [
            {"task": "t", "payload": {"bb": 2, "é": -0.0, "a": [1.5, None]}, "priority": 3},
            {"task": "t", "queue": "q", "max_attempts": 2, "delay": 2.5},
            {"task": "t", "run_at": datetime(2030, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))},
            {"task": "t", "payload": {"n": 1e23, "z": {"x": (1, 2)}, "m": 1e-7}},
        ]
    )
    stored = [client.get(job.id) for job in jobs]
    assert [job.to_dict() for job in jobs] == [job.to_dict() for job in stored if job]
    assert [json.dumps(job.payload) for job in jobs] == [json.dumps(j.payload) for j in stored if j]
    assert [job.id for job in jobs] == sorted(job.id for job in jobs)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.dictionaries(json_text, json_values, max_size=5))
def test_a_payload_reads_back_as_its_request_says_it_will(
    conn: psycopg.Connection[Any], payload: dict[str, Any]
) -> None:
    request = parse_request({"task": "t", "payload": payload})
    row = conn.execute("select %s::jsonb", [request.payload_json]).fetchone()
    assert row is not None
    # As text: key order, 1 against 1.0, and -0.0 against 0.0 all count.
    assert json.dumps(request.stored_payload) == json.dumps(row[0])


def test_batches_in_one_transaction_each_store_their_own_jobs(
    client: Client, db_url: str, app_connect: AppConnect
) -> None:
    with app_connect(db_url) as app_conn:
        first = client.enqueue_many([{"task": "a"}, {"task": "b"}], conn=app_conn)
        second = client.enqueue_many([{"task": "c"}], conn=app_conn)
        app_conn.commit()
    assert [job.task for job in first] == ["a", "b"]
    assert [job.task for job in second] == ["c"]
    assert sorted(job.task for job in client.list()) == ["a", "b", "c"]


def test_a_batch_notifies_each_of_its_queues_once(client: Client, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen errands_jobs")
        client.enqueue_many([{"task": "t", "queue": q} for q in ("mail", "pdf", "mail", "pdf")])
        client.enqueue("t", queue="end")  # marks the end of what the batch sent
        notes = []
        for note in listener.notifies(timeout=5):
            notes.append(note.payload)
            if note.payload == "end":
                break
    assert sorted(notes) == ["end", "mail", "pdf"]


def test_a_batch_conflicting_with_a_stored_key_leaves_the_callers_transaction_usable(
    client: Client, db_url: str, app_connect: AppConnect
) -> None:
    client.enqueue("t", {"n": 1}, idempotency_key="k1")
    with app_connect(db_url) as app_conn:
        with pytest.raises(IdempotencyConflict):
            client.enqueue_many(
                [{"task": "t"}, {"task": "t", "payload": {"n": 2}, "idempotency_key": "k1"}],
                conn=app_conn,
            )
        client.enqueue_many([{"task": "after"}], conn=app_conn)
        app_conn.commit()
    assert sorted(job.task for job in client.list()) == ["after", "t"]
