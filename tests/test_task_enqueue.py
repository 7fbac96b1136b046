"""Enqueueing from the task object: `task.enqueue(...)` and `task.options(...).enqueue(...)`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

import errands
from errands import Client, InvalidJob
from errands.async_client import AsyncClient, default_async_client
from errands.client import default_client, set_default_client
from tests.clients import AppConnect, EnqueueTask, Portal
from tests.clients import either_app_connect as app_connect
from tests.clients import either_client as client

__all__ = ["app_connect", "client"]  # each test runs with both clients: tests/clients.py


@errands.task("enqueue.send_email", queue="mail", max_attempts=3)
def send_email(to: str, subject: str = "") -> None: ...


def stored_jobs(conn: psycopg.Connection[Any]) -> int:
    (count,) = conn.execute("select count(*) from errands_jobs").fetchone()  # type: ignore[misc]
    return int(count)


def test_enqueue_stores_a_job_on_the_tasks_queue_with_its_budget(
    client: Client, enqueue_task: EnqueueTask
) -> None:
    job = enqueue_task(send_email, client=client)(to="ada@example.com")
    stored = client.get(job.id)
    assert stored is not None
    assert (stored.task, stored.queue, stored.max_attempts) == ("enqueue.send_email", "mail", 3)
    assert stored.payload == {"to": "ada@example.com"}


def test_options_override_the_tasks_defaults(client: Client, enqueue_task: EnqueueTask) -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    job = enqueue_task(
        send_email,
        client=client,
        queue="urgent",
        priority=7,
        run_at=at,
        max_attempts=9,
        idempotency_key="welcome:ada",
    )(to="ada@example.com", subject="hi")
    assert (job.queue, job.priority, job.max_attempts) == ("urgent", 7, 9)
    assert job.run_at == at and job.idempotency_key == "welcome:ada"


def test_delay_schedules_the_job_later(client: Client, enqueue_task: EnqueueTask) -> None:
    before = datetime.now(UTC)
    job = enqueue_task(send_email, client=client, delay=60)(to="a")
    assert job.run_at >= before + timedelta(seconds=60)


def test_an_unknown_argument_is_refused_and_nothing_is_stored(
    client: Client, conn: psycopg.Connection[Any], enqueue_task: EnqueueTask
) -> None:
    with pytest.raises(InvalidJob, match=r"payload\.subjet") as raised:
        enqueue_task(send_email, client=client)(to="a", subjet="typo")
    assert [e.field for e in raised.value.errors] == ["payload.subjet"]
    assert stored_jobs(conn) == 0


def test_a_missing_argument_is_refused_and_nothing_is_stored(
    client: Client, conn: psycopg.Connection[Any], enqueue_task: EnqueueTask
) -> None:
    with pytest.raises(InvalidJob, match=r"payload\.to: is required"):
        enqueue_task(send_email, client=client)(subject="no recipient")
    assert stored_jobs(conn) == 0


def test_enqueue_inside_a_rolled_back_transaction_leaves_no_job(
    client: Client, db_url: str, app_connect: AppConnect, enqueue_task: EnqueueTask
) -> None:
    with app_connect(db_url) as app_conn:
        enqueue_task(send_email, client=client, conn=app_conn)(to="a")
        app_conn.rollback()
    assert client.list() == []


def test_enqueue_without_a_client_uses_the_default_clients_database(
    client: Client, db_url: str, client_kind: str, portal: Portal
) -> None:
    previous = default_client()
    own = Client(db_url)
    set_default_client(own)  # what a worker does with its own database
    try:
        if client_kind == "Client":
            job = send_email.enqueue(to="a")
        else:

            async def enqueue_on_the_loops_default() -> Any:
                job = await send_email.aenqueue(to="a")
                default = default_async_client()
                assert default.dsn == db_url  # made for this loop, on the default's database
                await default.close()
                return job

            job = portal.call(enqueue_on_the_loops_default())
    finally:
        set_default_client(previous)
        own.close()
    assert client.get(job.id) is not None


def test_the_default_async_client_closes_with_its_event_loop(db_url: str) -> None:
    previous = default_client()
    own = Client(db_url)
    set_default_client(own)

    async def enqueue_and_leave_it_open() -> AsyncClient:
        await send_email.aenqueue(to="a")
        return default_async_client()

    try:
        default = asyncio.run(enqueue_and_leave_it_open())
    finally:
        set_default_client(previous)
        own.close()
    assert default._pool is None  # closed by asyncio.run's end, not left to the collector


def test_enqueue_by_name_still_works_and_takes_the_tasks_queue(client: Client) -> None:
    job = client.enqueue("enqueue.send_email", {"to": "a"})
    assert (job.queue, job.max_attempts) == ("mail", 3)


def test_over_http_a_job_by_name_takes_the_queue_and_budget_of_a_task_known_to_the_api(
    api: httpx.Client,
) -> None:
    one = api.post("/jobs", json={"task": "enqueue.send_email", "payload": {"to": "a"}}).json()
    batch = api.post("/jobs/batch", json={"jobs": [{"task": "enqueue.send_email"}]}).json()
    assert (one["queue"], one["max_attempts"]) == ("mail", 3)
    assert (batch["jobs"][0]["queue"], batch["jobs"][0]["max_attempts"]) == ("mail", 3)
    given = api.post("/jobs", json={"task": "enqueue.send_email", "queue": "other"}).json()
    assert given["queue"] == "other"
