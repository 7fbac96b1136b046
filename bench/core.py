"""Quick measurement of the queue core against the same PostgreSQL's own limit.

    .venv/bin/python bench/core.py [--jobs 5000] [--database-url URL]

Measures, on a fresh database: enqueue one job per transaction, enqueue_many in
batches of 1,000, and claim + complete with one acknowledgement per job (two
round trips a job, one worker, no task body); and pgbench with a one-INSERT
script on the same server, 1 client, 10 s, for scale. The full benchmark
(issue 7) grows out of this one.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from errands import Client
from errands.config import Settings
from errands.database import connect, resolve_url
from errands.queue import Completion, claim, complete

INSERT_SCRIPT = 'insert into bench_insert (payload) values (\'{"to": "a@example.com"}\');\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    server = args.database_url or resolve_url(Settings.from_env())
    name = f"errands_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"create database {name}")
    url = make_conninfo(server, dbname=name)
    try:
        report(url, args.jobs)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"drop database {name} with (force)")


def report(url: str, jobs: int) -> None:
    pgbench_tps = pgbench_single_insert(url)
    with Client(url) as client:
        start = time.perf_counter()
        for n in range(jobs):
            client.enqueue("noop", {"n": n})
        single = jobs / (time.perf_counter() - start)

        start = time.perf_counter()
        for first in range(0, jobs * 10, 1000):
            client.enqueue_many(
                [{"task": "noop", "payload": {"n": n}} for n in range(first, first + 1000)]
            )
        many = jobs * 10 / (time.perf_counter() - start)

    with connect(url) as conn:
        drained = 0
        start = time.perf_counter()
        while drained < jobs:
            (job,) = claim(conn, "bench", ["default"], limit=1, lease_seconds=30)
            complete(conn, "bench", [Completion(job.id, job.attempts, "null")])
            drained += 1
        claim_complete = drained / (time.perf_counter() - start)

    print(f"pgbench single INSERT, 1 client     {pgbench_tps:>10,.0f} tps")
    print(
        f"enqueue, one per transaction        {single:>10,.0f} jobs/s  ({single / pgbench_tps:.2f} x)"
    )
    print(
        f"enqueue_many, batches of 1,000      {many:>10,.0f} jobs/s  ({many / pgbench_tps:.2f} x)"
    )
    print(
        f"claim + complete, ack per job       {claim_complete:>10,.0f} jobs/s  ({claim_complete / pgbench_tps:.2f} x)"
    )


def pgbench_single_insert(url: str) -> float:
    pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table bench_insert (id bigserial primary key, payload jsonb)")
    params = conninfo_to_dict(url)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "insert.sql"
        script.write_text(INSERT_SCRIPT)
        out = subprocess.run(
            [
                pgbench,
                "-n",
                "-c",
                "1",
                "-T",
                "10",
                "-f",
                str(script),
                "-h",
                str(params["host"]),
                "-U",
                str(params.get("user", "postgres")),
                str(params["dbname"]),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    match = re.search(r"tps = ([\d.]+)", out)
    assert match, out
    return float(match.group(1))


if __name__ == "__main__":
    main()
