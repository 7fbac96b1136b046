"""Queue control: a paused queue's jobs stay pending until it is resumed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from errands import Client, JobState
from errands.errors import InvalidJob
from errands.queue.control import Filter, bulk, count_matching, pause, queues, resume, throughput
from errands.queue.lease import Completion, Held, claim, complete, fail
from errands.queue.queries import query
from tests.daemon import Daemon, wait_for

Conn = psycopg.Connection[Any]
StartDaemon = Callable[..., Daemon]


def claim_from(conn: Conn, *names: str) -> list[int]:
    return [job.id for job in claim(conn, "w1", names, limit=10, lease_seconds=30)]


def test_a_paused_queue_is_not_claimed(conn: Conn, client: Client) -> None:
    client.enqueue("t", queue="mail")
    pause(conn, "mail")
    assert claim_from(conn, "mail") == []


def test_pausing_one_queue_leaves_the_others_claimed(conn: Conn, client: Client) -> None:
    client.enqueue("t", queue="mail")
    other = client.enqueue("t", queue="reports")
    pause(conn, "mail")
    assert claim_from(conn, "mail", "reports") == [other.id]


def test_a_resumed_queue_is_claimed_again(conn: Conn, client: Client) -> None:
    job = client.enqueue("t", queue="mail")
    pause(conn, "mail")
    resume(conn, "mail")
    assert claim_from(conn, "mail") == [job.id]


def test_the_claim_looks_up_paused_queues_and_reads_jobs_by_the_claimable_index(conn: Conn) -> None:
    # The paused queues are a handful of rows, read by a lookup of their own (a hashed
    # subplan or a primary-key probe, as the planner likes), never by a join over jobs.
    plan = conn.execute(
        "explain (costs off) "
        + query("complete_and_claim")
        .decode()
        .replace("%(ids)s", "array[]::bigint[]")
        .replace("%(attempts)s", "array[]::int[]")
        .replace("%(results)s", "array[]::jsonb[]")
        .replace("%(progress)s", "array[]::jsonb[]")
        .replace("%(queues)s", "array['a','b']")
        .replace("%(limit)s", "10")
        .replace("%(async_limit)s", "5")
        .replace("%(async_tasks)s", "array['nap']")
        .replace("%(owner)s", "'w'")
        .replace("%(lease_seconds)s", "30")
    ).fetchall()
    text = "\n".join(line for (line,) in plan)
    assert "errands_queues" in text
    assert "Index Scan using errands_jobs_claimable" in text
    assert "Seq Scan on errands_jobs" not in text


def test_queues_lists_counts_and_paused_including_an_empty_paused_queue(
    conn: Conn, client: Client
) -> None:
    client.enqueue("t", queue="mail")
    pause(conn, "idle")
    listed = {q.name: q for q in queues(conn)}
    assert set(listed) == {"mail", "idle"}
    assert listed["idle"].paused and not listed["mail"].paused
    assert listed["mail"].counts[JobState.PENDING] == 1


def test_an_invalid_queue_name_is_refused_naming_the_field(conn: Conn) -> None:
    with pytest.raises(InvalidJob) as caught:
        pause(conn, "no spaces")
    assert [e.field for e in caught.value.errors] == ["name"]


def test_stats_name_the_paused_queues(conn: Conn, client: Client) -> None:
    pause(conn, "mail")
    assert client.stats().to_dict()["paused_queues"] == ["mail"]


# -- the HTTP API ----------------------------------------------------------------------------


def test_api_pauses_lists_and_resumes_a_queue(api: httpx.Client, client: Client) -> None:
    client.enqueue("t", queue="mail")
    paused = api.post("/queues/mail/pause")
    assert paused.status_code == 200
    assert paused.json() == {
        "name": "mail",
        "paused": True,
        "counts": {s.value: int(s is JobState.PENDING) for s in JobState},
        "concurrency": None,
        "concurrency_in_use": None,
        "rate": None,
        "rate_in_use": None,
        "throttled": 0,
    }
    assert api.get("/queues").json()["queues"][0]["paused"] is True
    assert api.post("/queues/mail/resume").json()["paused"] is False


def test_api_refuses_an_invalid_queue_name_with_422(api: httpx.Client) -> None:
    response = api.post("/queues/a%20b/pause")
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "name"


# -- the CLI ---------------------------------------------------------------------------------


def errands_cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "errands", "--database-url", db_url, *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_pauses_lists_and_resumes(db_url: str) -> None:
    assert errands_cli(db_url, "queues", "pause", "mail").stdout.strip() == "queue mail is paused"
    listed = json.loads(errands_cli(db_url, "queues", "list", "--json").stdout)
    assert [(q["name"], q["paused"]) for q in listed] == [("mail", True)]
    assert "paused (not claimed until resumed): mail" in errands_cli(db_url, "stats").stdout
    resumed = json.loads(errands_cli(db_url, "queues", "resume", "mail", "--json").stdout)
    assert resumed["paused"] is False


def test_cli_names_an_invalid_queue(db_url: str) -> None:
    result = errands_cli(db_url, "queues", "pause", "a b")
    assert result.returncode == 1
    assert "name" in result.stderr


# -- a real daemon ---------------------------------------------------------------------------


def test_a_daemon_leaves_a_paused_queues_jobs_pending_and_runs_them_once_resumed(
    start_daemon: StartDaemon, client: Client, conn: Conn
) -> None:
    pause(conn, "mail")
    held = client.enqueue("record", {"tag": "mail"}, queue="mail")
    daemon = start_daemon("--workers", "1", "--queues", "default,mail")
    # A later job on a running queue completes: the worker has looked, and passed `held` by.
    later = client.enqueue("record", {"tag": "default"})
    wait_for(lambda: _state(client, later.id) is JobState.COMPLETED, 20, "the later job")
    assert _state(client, held.id) is JobState.PENDING
    assert daemon.query("select job_id from test_executions where job_id = %s", (held.id,)) == []

    resume(conn, "mail")
    wait_for(lambda: _state(client, held.id) is JobState.COMPLETED, 20, "the resumed job")


def _state(client: Client, job_id: int) -> JobState | None:
    job = client.get(job_id)
    return job.state if job else None


# -- what the dashboard reads ----------------------------------------------------------------


def test_throughput_counts_completions_and_failures_per_minute(conn: Conn, client: Client) -> None:
    for _ in range(3):
        client.enqueue("t", max_attempts=1)
    first, second, third = claim(conn, "w1", ["default"], limit=3, lease_seconds=30)
    complete(conn, "w1", [Completion(j.id, j.attempts, "null") for j in (first, second)])
    fail(conn, "w1", Held(third.id, third.attempts), "boom", "tb", retry_in=0)
    since = conn.execute("select now() - interval '1 hour'").fetchone()[0]  # type: ignore[index]
    counted = {state: jobs for _, state, jobs in throughput(conn, since)}
    assert counted == {"completed": 2, "dead": 1}


def test_bulk_retry_applies_to_every_matching_dead_job_and_no_other(
    conn: Conn, client: Client
) -> None:
    dead = [client.enqueue("t", queue="mail", max_attempts=1) for _ in range(3)]
    other = client.enqueue("t", queue="reports", max_attempts=1)
    for job in claim(conn, "w1", ["mail", "reports"], limit=10, lease_seconds=30):
        fail(conn, "w1", Held(job.id, job.attempts), "boom", "tb", retry_in=0)
    where = Filter(queue="mail")
    assert count_matching(conn, "retry", where, cap=100) == 3
    assert bulk(conn, "retry", where) == 3
    assert {client.get(j.id).state for j in dead} == {JobState.PENDING}  # type: ignore[union-attr]
    assert client.get(other.id).state is JobState.DEAD  # type: ignore[union-attr]


def test_bulk_cancel_takes_only_jobs_that_have_not_started(conn: Conn, client: Client) -> None:
    client.enqueue("t")
    client.enqueue("t")
    (running,) = claim(conn, "w1", ["default"], limit=1, lease_seconds=30)
    assert bulk(conn, "cancel", Filter()) == 1
    states = {job.id: job.state for job in client.list()}
    assert states.pop(running.id) is JobState.IN_PROGRESS
    assert list(states.values()) == [JobState.CANCELLED]


def test_the_bulk_count_stops_at_its_cap(conn: Conn, client: Client) -> None:
    for _ in range(5):
        client.enqueue("t")
    assert count_matching(conn, "cancel", Filter(state=JobState.PENDING), cap=3) == 3
