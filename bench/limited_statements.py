"""Where the limited drain's statements spend their time, beside the unlimited drain's.

Runs `errands bench`'s drain and drain-limited workloads (20,000 no-op jobs, 2 workers at
defaults) on a server with pg_stat_statements loaded, resets its figures once each backlog
is stored, and prints, per workload, the claims (complete_and_claim statements), the jobs
they carried, their execution time, and the time spent waiting for the limit counters'
lock, then the statements that read the most buffers.

    .venv/bin/python bench/limited_statements.py postgresql://...   (a scratch server with
    shared_preload_libraries = 'pg_stat_statements', pg_stat_statements.track = all)
"""

from __future__ import annotations

import sys
from typing import Any

import psycopg

from errands.harness.bench import Bench, fresh_database

STATEMENTS = """
select query, calls, total_exec_time, rows, shared_blks_hit, toplevel
from pg_stat_statements
where dbid = (select oid from pg_database where datname = current_database())
"""


class MeasuredBench(Bench):
    def _enqueue_backlog(self, specs: list[dict[str, Any]]) -> None:
        super()._enqueue_backlog(specs)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("create extension if not exists pg_stat_statements")
            conn.execute("select pg_stat_statements_reset()")


def report(workload: str, rows: list[tuple[Any, ...]], jobs: int) -> None:
    claims = [r for r in rows if r[5] and r[0].startswith("with completed as (")]
    calls = sum(r[1] for r in claims)
    carried = sum(r[3] for r in claims)
    locked = sum(
        r[2] for r in rows if "counter.id = any(one_counters" in r[0] and "for update" in r[0]
    )
    print(
        f"{workload}: {calls} claims, {carried / calls:.1f} jobs a claim, "
        f"{sum(r[2] for r in claims):.0f} ms executing, {locked:.0f} ms of it for the "
        f"counters' lock, {sum(r[4] for r in claims) / jobs:.1f} buffers a job"
    )
    for query, n, ms, _, hits, top in sorted(rows, key=lambda r: -r[4])[:8]:
        text = " ".join(query.split())[:90]
        print(
            f"  {'top' if top else 'nested'} {n:6d} calls {hits / max(n, 1):7.1f} buffers "
            f"{ms:7.0f} ms | {text}"
        )


def main(server_url: str) -> None:
    bench = MeasuredBench(server_url, quick=False, report=lambda line: None, drain_jobs=20_000)
    with fresh_database(server_url) as url:
        bench.url = url
        for workload in ("drain", "drain_limited"):
            getattr(bench, workload)()
            with psycopg.connect(url) as conn:
                report(workload, conn.execute(STATEMENTS).fetchall(), bench.sizes.drain)
            bench._reset()


if __name__ == "__main__":
    main(sys.argv[1])
