"""The benchmark's workloads that need no daemon, run small against a test database:
`make bench-quick` is the only other place they run, and it runs in CI after the tests."""

import dataclasses
from typing import Any

import psycopg

from errands.harness.bench import (
    PER_KEY_KEYS,
    Bench,
    Figure,
    chosen_workloads,
    limited_job,
    per_key_job,
)


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


def test_the_limited_drains_store_their_jobs_under_their_limits(
    server_url: str, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    bench = small_bench(server_url, db_url)
    bench.sizes = dataclasses.replace(bench.sizes, drain=300)
    bench._declare_limits()

    bench._store_drain(limited_job)
    bench._store_drain(per_key_job)

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
