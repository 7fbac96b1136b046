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
    medians,
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


class ScriptedDrains(Bench):
    """A Bench whose drains add the rates they are given, in order, without a database."""

    def __init__(self, rounds: int, rates: dict[str, list[float]]) -> None:
        super().__init__("postgresql:///unused", quick=True, report=lambda line: None)
        self.rounds, self.rates, self.order = rounds, rates, []

    def _scripted(self, figure_id: str) -> None:
        self.order.append(figure_id)
        rate = self.rates[figure_id].pop(0)
        if figure_id == "drain":
            self.drains["drain"] = rate
        self._add(Figure(figure_id, "", rate, "jobs/s", ratio_to="drain"))

    def drain(self, *args: Any, **kwargs: Any) -> None:
        self._scripted("drain")

    def drain_limited(self) -> None:
        self._scripted("drain-limited")

    def _reset(self) -> None:
        pass


def test_the_drains_run_in_rounds_one_after_the_other() -> None:
    bench = ScriptedDrains(3, {"drain": [10.0, 10.0, 10.0], "drain-limited": [8.0, 8.0, 8.0]})

    bench._run_in_rounds(["drain", "drain-limited"])

    assert bench.order == ["drain", "drain-limited"] * 3


def test_each_drain_figure_is_the_median_of_its_rounds_and_its_ratio_the_median_ratio() -> None:
    bench = ScriptedDrains(3, {"drain": [10.0, 20.0, 12.0], "drain-limited": [9.0, 10.0, 6.0]})

    bench._run_in_rounds(["drain", "drain-limited"])

    drain, limited = bench.figures
    assert (drain.id, drain.value, drain.details["rounds"]) == ("drain", 12.0, [10.0, 20.0, 12.0])
    # Each round's ratio is to its own drain: 0.9, 0.5, 0.5.
    assert (limited.value, limited.ratio) == (9.0, 0.5)
    assert limited.details["round_ratios"] == [0.9, 0.5, 0.5]


def test_one_round_keeps_the_figures_as_they_were_measured() -> None:
    bench = ScriptedDrains(1, {"drain": [10.0], "drain-limited": [8.0]})

    bench._run_in_rounds(["drain", "drain-limited"])

    assert [(f.id, f.value, f.ratio, f.details) for f in bench.figures] == [
        ("drain", 10.0, 1.0, {}),
        ("drain-limited", 8.0, 0.8, {}),
    ]


def test_medians_of_figures_without_a_ratio_have_none() -> None:
    rounds = [[Figure("memory", "", v, "MB")] for v in (200.0, 210.0)]

    (memory,) = medians(rounds)

    assert (memory.value, memory.ratio, memory.details) == (205.0, None, {"rounds": [200.0, 210.0]})
