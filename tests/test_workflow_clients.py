"""Workflows through either client: the AsyncClient stores and reads them as the Client does
(one copy of the logic, as steps)."""

from __future__ import annotations

import pytest

from errands import Client, InvalidJob, JobState
from tests.clients import AppConnect
from tests.clients import either_app_connect as app_connect
from tests.clients import either_client as client

__all__ = ["app_connect", "client"]  # each test runs with both clients: tests/clients.py

FAN_IN = [
    {"ref": "a", "task": "t"},
    {"ref": "b", "task": "t"},
    {"ref": "join", "task": "t", "after": ["a", "b"]},
]


def test_a_workflow_is_stored_parents_first_and_read_back_by_its_id(client: Client) -> None:
    jobs = client.enqueue_workflow(FAN_IN)
    a, b, join = jobs
    assert join.parents == [a.id, b.id] and join.state is JobState.WAITING
    assert {job.workflow_id for job in jobs} == {a.workflow_id} != {None}
    assert client.workflow(a.workflow_id or 0) == jobs


def test_a_workflow_naming_an_unknown_ref_stores_nothing(client: Client) -> None:
    with pytest.raises(InvalidJob, match=r"jobs\[1\]\.after\[0\]"):
        client.enqueue_workflow(
            [{"ref": "a", "task": "t"}, {"ref": "b", "task": "t", "after": ["nope"]}]
        )
    assert client.list() == []


def test_a_workflow_in_a_rolled_back_transaction_leaves_no_job(
    client: Client, db_url: str, app_connect: AppConnect
) -> None:
    with app_connect(db_url) as app_conn:
        client.enqueue_workflow(FAN_IN, conn=app_conn)
        app_conn.rollback()
    assert client.list() == []
