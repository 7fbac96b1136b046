"""The benchmark's workloads that need no daemon, run small against a test database:
`make bench-quick` is the only other place they run, and it runs in CI after the tests."""

import dataclasses
from typing import Any

import psycopg
import pytest

from errands import Client
from errands.harness import server
from errands.harness.bench import (
    PER_KEY_KEYS,
    Bench,
    Figure,
    chosen_workloads,
    limited_job,
    per_key_job,
)
from errands.harness.waiting import drained, wait_until_drained
from errands.queue.lease import Completion, claim, complete_and_claim


def small_bench(server_url: str, db_url: str) -> Bench:
    bench = Bench(server_url, quick=True, report=lambda line: None)
    bench.url = db_url
    bench.sizes = dataclasses.replace(bench.sizes, enqueue_single=20, enqueue_batch=1000)
    bench.pgbench_tps = {"INSERT 1 client": 1000.0}
    return bench


def test_the_enqueue_floors_store_what_they_time(
    server_url: str, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    bench = small_bench(server_url, db_url)

    bench.enqueue_floors()

    assert [figure.id for figure in bench.figures] == [
        "enqueue-single floor",
        "enqueue-batch floor",
    ]
    assert conn.execute("select count(*) from errands_jobs").fetchone() == (1020,)


def test_the_bench_says_which_server_it_measured_and_how_it_reached_it(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    described = server.describe(db_url)

    assert described["version"] == conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
    expected_socket = "unix socket" if conn.info.host.startswith("/") else "TCP"
    assert described["socket"].startswith(expected_socket)
    assert described["settings"]["fsync"] in ("on", "off")
    assert set(described["settings"]) == set(server.SETTINGS)
    assert any(described["version"] in line for line in server.summary(described))


def test_a_queue_is_drained_once_no_job_is_pending_failed_or_in_progress(
    db_url: str, client: Client, conn: psycopg.Connection[Any]
) -> None:
    job = client.enqueue("t")
    assert not drained(db_url)
    with pytest.raises(TimeoutError):
        wait_until_drained(db_url, timeout=0.1, what="a pending job")

    assert [claimed.id for claimed in claim(conn, "bench-test", ["default"], 1, 30)] == [job.id]
    assert not drained(db_url)

    complete_and_claim(conn, "bench-test", [Completion(job.id, 1, "null", None)], (), 0, 30)
    assert drained(db_url)
    wait_until_drained(db_url, timeout=5, what="nothing")


def test_the_limited_drains_store_their_jobs_under_their_limits(
    server_url: str, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    bench = small_bench(server_url, db_url)
    bench._declare_limits()

    bench._enqueue_backlog([limited_job(n) for n in range(300)])
    bench._enqueue_backlog([per_key_job(n) for n in range(300)])

    groups = conn.execute(
        "select task, count(distinct limit_group) from errands_jobs"
        " where limit_group <> '' group by task order by task"
    ).fetchall()
    assert groups == [("bench.limited", 1), ("bench.per_key", PER_KEY_KEYS)]
    bench._reset()
    assert conn.execute("select count(*) from errands_limits").fetchone() == (0,)


def test_the_limited_drains_are_ratios_to_the_plain_drain_which_runs_with_them() -> None:
    assert chosen_workloads({"drain-limited"}) == ["baseline", "drain", "drain-limited"]
    bench = Bench("postgresql:///unused", quick=True, report=lambda line: None)
    bench.drains["drain"] = 1000.0

    bench._add(Figure("drain-limited", "limited", 800.0, "jobs/s", ratio_to="drain"))

    assert bench.figures[0].ratio == 0.8
