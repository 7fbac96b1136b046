"""The `errands` command as a person or a script uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from errands import Client, JobState
from errands.queue.lease import Held, claim, fail, heartbeat
from errands.queue.presence import announce
from errands.schema.migrator import available_migrations

Conn = psycopg.Connection[Any]


def errands(
    db_url: str, *args: str, check: bool = True, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ERRANDS_DATABASE_URL": db_url, "ERRANDS_LOG_FORMAT": "json", **env}
    return subprocess.run(
        [sys.executable, "-m", "errands", *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        cwd=cwd,
    )


def errands_json(db_url: str, *args: str) -> Any:
    return json.loads(errands(db_url, *args, "--json").stdout)


def test_enqueue_with_every_option(db_url: str) -> None:
    job = errands_json(
        db_url,
        "enqueue",
        "send_email",
        '{"to": "a@example.com"}',
        "--queue",
        "mail",
        "--priority",
        "3",
        "--delay",
        "60",
        "--idempotency-key",
        "k",
        "--max-attempts",
        "2",
    )
    assert (job["task"], job["queue"], job["priority"], job["max_attempts"]) == (
        "send_email",
        "mail",
        3,
        2,
    )
    assert job["payload"] == {"to": "a@example.com"} and job["idempotency_key"] == "k"
    assert job["run_at"] > job["created_at"]


def test_enqueue_refuses_a_payload_that_is_not_json(db_url: str) -> None:
    result = errands(db_url, "enqueue", "t", "{nope", check=False)
    assert result.returncode == 2 and "PAYLOAD" in result.stderr


def test_enqueue_refuses_an_invalid_task_name_and_says_why(db_url: str) -> None:
    result = errands(db_url, "enqueue", "bad name", check=False)
    assert result.returncode == 1 and "task: must match" in result.stderr


MAIL_TASKS = """
import errands

@errands.task(queue="mail", max_attempts=3)
def send_welcome(to: str) -> None: ...
"""


def test_enqueue_puts_a_loaded_task_on_its_queue_with_its_budget(
    db_url: str, tmp_path: Path
) -> None:
    (tmp_path / "cli_mail_tasks.py").write_text(MAIL_TASKS)
    args = ("enqueue", "send_welcome", '{"to": "a@example.com"}', "--json")
    modules = ("--tasks", "cli_mail_tasks")
    given = errands(db_url, *args, *modules, cwd=tmp_path)
    from_env = errands(db_url, *args, cwd=tmp_path, ERRANDS_TASKS="cli_mail_tasks")
    for job in (json.loads(given.stdout), json.loads(from_env.stdout)):
        assert (job["queue"], job["max_attempts"]) == ("mail", 3)
    chosen = errands(db_url, *args, *modules, "--queue", "other", cwd=tmp_path)
    assert json.loads(chosen.stdout)["queue"] == "other"  # what the command names wins
    unknown = errands(db_url, "enqueue", "other_task", "--json", *modules, cwd=tmp_path)
    assert json.loads(unknown.stdout)["queue"] == "default"


def test_enqueue_with_a_task_module_that_cannot_load_says_so_in_one_line(
    db_url: str, client: Client
) -> None:
    result = errands(db_url, "enqueue", "t", "--tasks", "no_such_tasks_module", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("errands: cannot import task module 'no_such_tasks_module'")
    assert result.stderr.count("\n") == 1 and client.list() == []


def test_jobs_list_and_show(client: Client, db_url: str) -> None:
    first = client.enqueue("a")
    second = client.enqueue("b")
    listed = errands_json(db_url, "jobs", "list")
    assert [job["id"] for job in listed] == [second.id, first.id]
    assert errands_json(db_url, "jobs", "show", str(first.id))["task"] == "a"
    assert "STATE" in errands(db_url, "jobs", "list").stdout


def test_jobs_show_of_an_unknown_job_fails(db_url: str) -> None:
    result = errands(db_url, "jobs", "show", "999", check=False)
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_jobs_cancel_and_retry(client: Client, db_url: str) -> None:
    job = client.enqueue("a")
    assert errands_json(db_url, "jobs", "cancel", str(job.id))["state"] == "cancelled"
    assert errands_json(db_url, "jobs", "retry", str(job.id))["state"] == "pending"


def test_jobs_cancel_asks_a_running_job_to_stop_and_show_gives_its_progress(
    client: Client, db_url: str, conn: Conn
) -> None:
    job = client.enqueue("a")
    (claimed,) = claim(conn, "w1", ["default"], 1, 30)
    heartbeat(conn, "w1", [Held(claimed.id, claimed.attempts)], 30, {job.id: "0.125"})
    assert "progress: 12%" in errands(db_url, "jobs", "show", str(job.id)).stdout
    asked = errands(db_url, "jobs", "cancel", str(job.id)).stdout
    assert asked.startswith(f"job {job.id} in_progress: asked to stop")
    shown = errands_json(db_url, "jobs", "show", str(job.id))
    assert (shown["progress"], shown["state"]) == (0.125, "in_progress")
    assert shown["cancel_requested_at"] is not None


def test_jobs_retry_of_a_pending_job_is_refused(client: Client, db_url: str) -> None:
    job = client.enqueue("a")
    result = errands(db_url, "jobs", "retry", str(job.id), check=False)
    assert result.returncode == 1 and "pending" in result.stderr
    assert client.get(job.id).state is JobState.PENDING  # type: ignore[union-attr]


def test_stats_counts_by_queue_and_state(client: Client, db_url: str) -> None:
    client.enqueue("a", queue="mail")
    stats = errands_json(db_url, "stats")
    assert stats["queues"]["mail"]["pending"] == 1
    assert stats["workers"] == []


def test_stats_lists_live_workers_per_host(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for worker in ("alpha:11:a", "alpha:12:b", "beta:13:c"):
            announce(conn, worker, ["default"], concurrency=1)
    out = errands(db_url, "stats").stdout
    assert "3 live worker(s) on 2 host(s)" in out
    assert "alpha: 2 worker(s)" in out and "beta: 1 worker(s)" in out
    hosts = [w["host"] for w in errands_json(db_url, "stats")["workers"]]
    assert sorted(hosts) == ["alpha", "alpha", "beta"]


def test_migrate_is_idempotent(empty_db_url: str) -> None:
    every = [f"{m.version:04d}_{m.name}" for m in available_migrations()]
    assert errands_json(empty_db_url, "migrate") == {"applied": every}
    assert errands_json(empty_db_url, "migrate") == {"applied": []}


def test_prune_deletes_old_finished_jobs(client: Client, db_url: str) -> None:
    job = client.enqueue("a")
    client.cancel(job.id)
    assert errands_json(db_url, "prune", "--older-than", "0") == {"deleted": 1}


def test_an_invalid_setting_stops_the_command_with_its_name(db_url: str) -> None:
    env = {**os.environ, "ERRANDS_DATABASE_URL": db_url, "ERRANDS_LEASE_SECONDS": "soon"}
    result = subprocess.run(
        [sys.executable, "-m", "errands", "stats"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "ERRANDS_LEASE_SECONDS" in result.stderr


def test_enqueue_says_when_an_idempotency_key_replays_a_stored_job(db_url: str) -> None:
    first = errands(db_url, "enqueue", "a", "--idempotency-key", "k").stdout
    again = errands(db_url, "enqueue", "a", "--idempotency-key", "k").stdout
    assert "replayed" not in first
    assert "replayed: idempotency key 'k' is stored already" in again
    assert again.split(" (")[0] == first.strip()  # the same job


def test_enqueue_json_stays_the_job_and_says_replayed_on_stderr(db_url: str) -> None:
    errands(db_url, "enqueue", "a", "--idempotency-key", "k")
    again = errands(db_url, "enqueue", "a", "--idempotency-key", "k", "--json")
    assert json.loads(again.stdout)["idempotency_key"] == "k"
    assert "replayed" in again.stderr


def test_jobs_show_prints_the_traceback_of_the_last_error(client: Client, conn: Conn) -> None:
    job = client.enqueue("a")
    (held,) = claim(conn, "w1", ["default"], 1, 30)
    fail(conn, "w1", Held(held.id, held.attempts), "ValueError: bad", "Traceback: line 7", 0)
    shown = errands(conn.info.dsn, "jobs", "show", str(job.id)).stdout
    assert "attempt 1" in shown and "ValueError: bad" in shown
    assert "Traceback: line 7" in shown


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "errands", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"errands, version {metadata.version('errands')}"


def test_global_options_are_accepted_after_the_command_too(client: Client, db_url: str) -> None:
    client.enqueue("a", queue="after")
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "errands", "stats", "--json", "--database-url", db_url],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["queues"]["after"]["pending"] == 1


def test_the_command_imports_neither_the_harness_nor_its_dependencies() -> None:
    # The harness registers tasks (chaos.*) that every worker would otherwise offer.
    code = (
        "import sys, errands.cli; "
        "print([m for m in sys.modules if m.startswith('errands.harness') or m == 'httpx'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_bench_without_the_harness_extra_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['httpx'] = None; sys.argv = ['errands', 'bench', '--quick']; "
        "from errands.cli import main; main()"
    )
    env = {**os.environ, "ERRANDS_DATABASE_URL": "postgresql://unused"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "errands bench needs httpx: pip install 'errands[harness]'" in result.stderr


def test_enqueue_after_other_jobs_waits_for_them(db_url: str) -> None:
    parent = errands_json(db_url, "enqueue", "t")
    child = errands_json(
        db_url, "enqueue", "t", "--after", str(parent["id"]), "--on-parent-failure", "run"
    )
    assert child["state"] == "waiting" and child["parents"] == [parent["id"]]
    assert child["on_parent_failure"] == "run"
    missing = errands(db_url, "enqueue", "t", "--after", "99999", check=False)
    assert missing.returncode != 0 and "after[0]: no job has id 99999" in missing.stderr


def test_jobs_show_prints_values_as_json_never_as_python(client: Client, db_url: str) -> None:
    job = client.enqueue("a", {"flag": True, "name": "é"})

    shown = errands(db_url, "jobs", "show", str(job.id)).stdout

    assert ' payload: {"flag": true, "name": "é"}' in shown
    assert " result: null" in shown
    assert "None" not in shown and "True" not in shown
