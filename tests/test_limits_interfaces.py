"""Queue limits and unique jobs through the HTTP API and the CLI: set, shown, removed, refused."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from errands import Client
from errands.queue.lease import claim
from tests.test_cli import errands, errands_json


def test_patch_sets_a_queue_limit_and_get_queues_shows_it(api: httpx.Client) -> None:
    answer = api.patch("/queues/mail", json={"concurrency": 5, "rate": "20/s"})
    assert answer.status_code == 200
    assert {k: answer.json()[k] for k in ("name", "concurrency", "rate")} == {
        "name": "mail",
        "concurrency": 5,
        "rate": "20/s",
    }
    (mail,) = api.get("/queues").json()["queues"]
    assert (mail["concurrency"], mail["concurrency_in_use"], mail["rate"]) == (5, 0, "20/s")


def test_patch_null_removes_a_limit_and_an_absent_field_keeps_one(api: httpx.Client) -> None:
    api.patch("/queues/mail", json={"concurrency": 5, "rate": "20/s"})
    answer = api.patch("/queues/mail", json={"concurrency": None})
    assert (answer.json()["concurrency"], answer.json()["rate"]) == (None, "20/s")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": "5"}, "concurrency"),
        ({"rate": "20/d"}, "rate"),
        ({"rate": 20}, "rate"),
        ({"paused": True}, "paused"),
        ([1], "body"),
    ],
)
def test_patch_refuses_bad_limits_naming_the_field(
    api: httpx.Client, body: object, field: str
) -> None:
    answer = api.patch("/queues/mail", json=body)
    assert answer.status_code == 422
    assert [d["field"] for d in answer.json()["error"]["details"]] == [field]
    assert api.get("/queues").json()["queues"] == []


def test_metrics_count_the_jobs_a_full_limit_holds_back(
    api: httpx.Client, client: Client, conn: psycopg.Connection[Any]
) -> None:
    api.patch("/queues/mail", json={"concurrency": 1})
    for _ in range(3):
        client.enqueue("t", queue="mail")
    claim(conn, "w1", ("mail",), 5, 60)
    claim(conn, "w1", ("mail",), 5, 60)  # the first claim met the queue's counter
    assert 'errands_jobs_throttled{queue="mail"} 2.0' in api.get("/metrics").text


def test_cli_sets_lists_and_removes_queue_limits(db_url: str) -> None:
    shown = errands_json(db_url, "queues", "set", "mail", "--concurrency", "3", "--rate", "10/m")
    assert (shown["concurrency"], shown["rate"]) == (3, "10/m")
    listed = errands(db_url, "queues", "list").stdout
    assert "3 at once (0), 10/m (0)" in listed
    shown = errands_json(db_url, "queues", "set", "mail", "--rate", "none")
    assert (shown["concurrency"], shown["rate"]) == (3, None)


def test_cli_refuses_a_bad_limit_naming_the_option(db_url: str) -> None:
    answer = errands(db_url, "queues", "set", "mail", "--rate", "10/d", check=False)
    assert (
        answer.returncode != 0 and "--rate" in answer.stderr and "N/s, N/m or N/h" in answer.stderr
    )
    answer = errands(db_url, "queues", "set", "mail", check=False)
    assert answer.returncode != 0 and "--concurrency and/or --rate" in answer.stderr


def test_cli_enqueue_with_a_unique_key_shows_the_live_job(db_url: str) -> None:
    first = errands_json(db_url, "enqueue", "reindex", "{}", "--unique-key", "k")
    again = errands(db_url, "enqueue", "reindex", '{"v": 2}', "--unique-key", "k")
    assert (
        f"job {first['id']} pending" in again.stdout
        and "is held by this pending job" in again.stdout
    )
    replaced = errands_json(
        db_url, "enqueue", "reindex", '{"v": 3}', "--unique-key", "k", "--on-conflict", "replace"
    )
    assert (replaced["id"], replaced["payload"]) == (first["id"], {"v": 3})
