"""The benchmark's workloads that need no daemon, run small against a test database:
`make bench-quick` is the only other place they run, and it runs in CI after the tests."""

import dataclasses
from typing import Any

import psycopg

from errands.harness.bench import Bench


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
