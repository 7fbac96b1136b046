"""Where a one-job enqueue's client time goes, layer by layer, beside the statement alone.

Each layer adds one part of `Client.enqueue` to the one before, on the same server and
in the same process, and the layers run in alternated rounds (so that a slower moment
of the machine falls on all of them):

    statement   the enqueue statement alone, psycopg (the bench's enqueue-single floor,
                sent unprepared as the Client sends it)
    steps       the same statement through errands/queue/steps.py's runner and the
                enqueue's steps (the `Job` built from the row), the request checked once
    validated   Client.enqueue(conn=...): the request checked at every call
    pooled      Client.enqueue(): a connection of the Client's pool at every call

Prints, per layer, the median wall time and client CPU per job over the rounds (CPU
of this process: the server's CPU is the same statement's in every layer).

    .venv/bin/python bench/enqueue_single_layers.py URL [ROUNDS] [JOBS]

URL is a PostgreSQL server; the script measures on a new database of its own, dropped
afterwards.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

from errands import Client
from errands.client import POOLED, job_request
from errands.database import configure
from errands.harness.bench import fresh_database
from errands.queue.queries import query
from errands.queue.steps import run
from errands.queue.submit import enqueue_params, enqueue_steps

NOOP = "bench.noop"


def layers(client: Client, conn: psycopg.Connection[Any]) -> dict[str, Callable[[], Any]]:
    request = job_request(NOOP, None, None, 0, None, None, None, None, None, "keep")
    params = enqueue_params(request)
    return {
        "statement": lambda: conn.execute(query("enqueue"), params).fetchone(),
        "steps": lambda: run(conn, enqueue_steps(request)),
        "validated": lambda: client.enqueue(NOOP, conn=conn),
        "pooled": lambda: client.enqueue(NOOP),
    }


def measure(layer: Callable[[], Any], jobs: int) -> tuple[float, float]:
    """Wall time and this process's CPU per job, in microseconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(jobs):
        layer()
    return (time.perf_counter() - wall) / jobs * 1e6, (time.process_time() - cpu) / jobs * 1e6


def main(server_url: str, rounds: int, jobs: int) -> None:
    with (
        fresh_database(server_url) as url,
        Client(url) as client,
        psycopg.connect(url, **POOLED) as conn,
    ):
        configure(conn)
        chosen = layers(client, conn)
        for layer in chosen.values():  # warm: caches, the pool, the server's plans
            measure(layer, 200)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in chosen}
        for _ in range(rounds):
            for name, layer in chosen.items():
                figures[name].append(measure(layer, jobs))
    for name, runs in figures.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:10} {wall:5.0f} us a job, client CPU {cpu:4.0f} us")


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]) if len(sys.argv) > 2 else 8,
        int(sys.argv[3]) if len(sys.argv) > 3 else 2000,
    )
