"""errands through a real PgBouncer in transaction pooling mode, and several supervisors at once.

The `pgbouncer` fixture starts Debian's PgBouncer (1.18: it cannot track
prepared statements) on a free port in front of the test PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from errands import Client, JobState
from errands.harness.process import free_port
from errands.queue.lease import WORKER_EXITED, reap
from errands.workers.wakeups import MISCONFIGURED, notifications_arrive
from tests.clients import AppConnect, Portal, blocking_client, closing
from tests.clients import either_app_connect as app_connect
from tests.conftest import ServeApi
from tests.daemon import Daemon, wait_for

StartDaemon = Callable[..., Daemon]


@pytest.fixture
def pooled_client(bouncer_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """A client configured for the pooler, as a deployment behind PgBouncer sets it."""
    monkeypatch.setenv("ERRANDS_PGBOUNCER", "1")
    with Client(bouncer_url) as client:
        yield client


@pytest.fixture
def either_pooled_client(
    client_kind: str, bouncer_url: str, portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Client]:
    """pooled_client, for both clients (tests/clients.py)."""
    monkeypatch.setenv("ERRANDS_PGBOUNCER", "1")
    with closing(blocking_client(client_kind, bouncer_url, portal)) as client:
        yield client


__all__ = ["app_connect"]  # with both clients: tests/clients.py


def take_the_last_server_connection(bouncer_url: str) -> psycopg.Connection[object]:
    """Hold, inside a transaction, the server connection PgBouncer handed out last (LIFO).

    The next transaction of any other client then runs on a different server connection.
    """
    holder = psycopg.connect(bouncer_url, prepare_threshold=None)
    holder.execute("select 1")
    return holder


def all_completed(client: Client, ids: list[int]) -> bool:
    return all((job := client.get(i)) is not None and job.state is JobState.COMPLETED for i in ids)


# -- the pooler really pools transactions, and errands can tell ---------------------------


def test_the_listen_probe_tells_a_transaction_pooler_from_a_direct_connection(
    db_url: str, bouncer_url: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as direct:
        assert notifications_arrive(direct, db_url)
    with psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=None) as pooled:
        assert not notifications_arrive(pooled, bouncer_url, timeout=1)


def test_without_any_setting_the_client_works_whatever_server_connection_it_gets(
    bouncer_url: str, monkeypatch: pytest.MonkeyPatch, client_kind: str, portal: Portal
) -> None:
    # psycopg prepares a statement run five times, on the server connection of that moment;
    # the next transaction may run on another, where that name is unknown or, worse, is
    # another client's statement. The Client therefore prepares nothing on the server.
    monkeypatch.delenv("ERRANDS_PGBOUNCER", raising=False)
    with closing(blocking_client(client_kind, bouncer_url, portal, max_connections=1)) as client:
        job = client.enqueue("record", {"tag": "a"}, idempotency_key="k1")
        for _ in range(6):
            assert client.get(job.id) == job
            client.enqueue("record", {"tag": "a"}, idempotency_key="k1")
            client.list(queue="default")
            client.stats()
        with take_the_last_server_connection(bouncer_url):
            assert client.get(job.id) == job
            assert client.enqueue("record", {"tag": "a"}, idempotency_key="k1").id == job.id
            assert [j.id for j in client.list(queue="default")] == [job.id]
            assert client.cancel(job.id).state is JobState.CANCELLED
            assert client.retry(job.id).state is JobState.PENDING
            assert client.stats().queues[0].counts[JobState.PENDING] == 1


# -- the Python client and the HTTP API ------------------------------------------------------


def test_the_client_works_through_pgbouncer_whatever_server_connection_it_gets(
    either_pooled_client: Client, bouncer_url: str
) -> None:
    pooled_client = either_pooled_client
    job = pooled_client.enqueue("record", {"tag": "a"}, idempotency_key="k1")
    for _ in range(6):
        assert pooled_client.get(job.id) == job
    with take_the_last_server_connection(bouncer_url):
        assert pooled_client.get(job.id) == job
        assert pooled_client.enqueue("record", {"tag": "a"}, idempotency_key="k1").id == job.id
        assert [j.id for j in pooled_client.list(queue="default")] == [job.id]
        assert pooled_client.cancel(job.id).state is JobState.CANCELLED
        assert pooled_client.retry(job.id).state is JobState.PENDING
        assert pooled_client.stats().queues[0].counts[JobState.PENDING] == 1


def test_jobs_enqueued_one_by_one_on_changing_server_connections_come_back_as_stored(
    either_pooled_client: Client, bouncer_url: str
) -> None:
    # errands_enqueue_job's INSERT is planned by PL/pgSQL and cached per server connection
    # (custom plans for the first five calls, then a generic one), whichever client the
    # pooler lends that connection to: more than five calls on each of two of them.
    client = either_pooled_client
    jobs = [client.enqueue("record", {"n": n}) for n in range(7)]
    with take_the_last_server_connection(bouncer_url):
        jobs += [client.enqueue("record", {"n": n}, priority=n) for n in range(7, 14)]
    jobs += [client.enqueue("record", {"n": n}) for n in range(14, 21)]
    assert [job.payload["n"] for job in jobs] == list(range(21))
    assert jobs == [client.get(job.id) for job in jobs]


def test_enqueue_inside_the_callers_transaction_through_pgbouncer_rolls_back_with_it(
    either_pooled_client: Client, bouncer_url: str, app_connect: AppConnect
) -> None:
    pooled_client = either_pooled_client
    with app_connect(bouncer_url, prepare_threshold=None) as conn:
        pooled_client.enqueue("record", conn=conn)
        conn.rollback()
        kept = pooled_client.enqueue("record", conn=conn)
        conn.commit()
    assert [j.id for j in pooled_client.list()] == [kept.id]


def test_the_http_api_works_through_pgbouncer_under_concurrent_requests(
    serve_api: ServeApi, bouncer_url: str
) -> None:
    http = serve_api(url=bouncer_url, pgbouncer=True)
    failures: list[str] = []

    def submit(n: int) -> None:
        for i in range(15):
            created = http.post("/jobs", json={"task": "record", "payload": {"tag": f"{n}-{i}"}})
            fetched = http.get(f"/jobs/{created.json().get('id')}")
            if (created.status_code, fetched.status_code) != (201, 200):
                failures.append(f"{created.status_code} {fetched.status_code} {fetched.text}")

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    batch = http.post("/jobs/batch", json={"jobs": [{"task": "record"}] * 10})
    assert batch.status_code == 201
    assert http.get("/stats").json()["queues"]["default"]["pending"] == 130
    assert http.get("/ready").status_code == 200


# -- the daemon --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_daemon_with_its_http_child_drains_jobs_through_pgbouncer_and_recovers_a_killed_worker(
    start_daemon: StartDaemon, pooled_client: Client, bouncer_url: str
) -> None:
    daemon = start_daemon(
        "--workers",
        "2",
        "--port",
        str(free_port()),
        ERRANDS_DATABASE_URL=bouncer_url,
        ERRANDS_PGBOUNCER="1",
        ERRANDS_LEASE_SECONDS="30",
    )
    daemon.wait_for_workers(2)
    held = pooled_client.enqueue("hold", {"seconds": 60})
    victim = wait_for(lambda: owner_pid(pooled_client, held.id), what="the held job to start")
    jobs = pooled_client.enqueue_many([{"task": "record"}] * 40)
    os.kill(victim, signal.SIGKILL)
    ids = [held.id, *(job.id for job in jobs)]
    wait_for(lambda: all_completed(pooled_client, ids), timeout=60, what="every job to complete")
    recovered = pooled_client.get(held.id)
    assert recovered is not None and [e["error"] for e in recovered.errors] == [WORKER_EXITED]
    events = daemon.log_events()
    assert MISCONFIGURED not in [e.get("event") for e in events]
    started = [e for e in events if e.get("event") == "worker started"]
    assert started and {e["wakeups"] for e in started} == {"poll"}
    assert daemon.stop() == 0


@pytest.mark.slow
def test_listen_through_a_transaction_pooler_is_detected_and_the_worker_polls_instead(
    start_daemon: StartDaemon, pooled_client: Client, bouncer_url: str
) -> None:
    # The common mistake: the pooler's URL, without ERRANDS_PGBOUNCER or --poll-only.
    daemon = start_daemon("--workers", "1", ERRANDS_DATABASE_URL=bouncer_url, ERRANDS_PGBOUNCER="0")
    daemon.wait_for_workers(1)
    warned = wait_for(
        lambda: [e for e in daemon.log_events() if e.get("event") == MISCONFIGURED],
        what="the misconfiguration message",
    )
    assert warned[0]["level"] == "error"
    started = [e for e in daemon.log_events() if e.get("event") == "worker started"]
    assert {e["wakeups"] for e in started} == {"poll"}
    jobs = pooled_client.enqueue_many([{"task": "record"}] * 20)
    ids = [job.id for job in jobs]
    wait_for(lambda: all_completed(pooled_client, ids), timeout=60, what="jobs to complete")
    assert daemon.stop() == 0


# -- several supervisors ------------------------------------------------------------------------


@pytest.mark.slow
def test_two_supervisors_through_pgbouncer_drain_one_queue_each_releasing_only_its_own_workers(
    start_daemon: StartDaemon, pooled_client: Client, bouncer_url: str
) -> None:
    hosts = ("alpha", "beta")
    daemons = {
        host: start_daemon(
            "--workers",
            "2",
            "--concurrency",
            "1",  # one job per worker, so that each host holds two of the four
            ERRANDS_DATABASE_URL=bouncer_url,
            ERRANDS_PGBOUNCER="1",
            ERRANDS_HOSTNAME=host,
            ERRANDS_LEASE_SECONDS="30",  # recovery by the supervisors, not the reaper
        )
        for host in hosts
    }
    for daemon in daemons.values():
        daemon.wait_for_workers(2)
    by_host = {w.host: 0 for w in pooled_client.stats().workers}
    for worker in pooled_client.stats().workers:
        by_host[worker.host] += 1
        assert worker.id.startswith(f"{worker.host}:")
    assert by_host == {"alpha": 2, "beta": 2}

    # Every worker holds a job; one worker of each supervisor is SIGKILLed.
    held = [pooled_client.enqueue("hold", {"seconds": 15}) for _ in range(4)]
    owners = wait_for(lambda: all_owners(pooled_client, [j.id for j in held]), what="4 holders")
    jobs = pooled_client.enqueue_many([{"task": "record"}] * 60)
    victims = {host: next(o for o in owners if o.startswith(f"{host}:")) for host in hosts}
    for owner in victims.values():
        os.kill(int(owner.split(":")[1]), signal.SIGKILL)

    ids = [j.id for j in held] + [j.id for j in jobs]
    wait_for(lambda: all_completed(pooled_client, ids), timeout=60, what="every job to complete")
    for host, daemon in daemons.items():
        released = [
            e["worker"]
            for e in daemon.log_events()
            if e.get("event") == "released the jobs of an exited worker"
        ]
        assert released == [victims[host]], host
    for daemon in daemons.values():
        assert daemon.stop() == 0


def test_only_one_reaper_runs_at_a_time_through_pgbouncer(
    pooled_client: Client, bouncer_url: str
) -> None:
    with (
        psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=None) as first,
        psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=None) as second,
    ):
        with first.transaction():
            assert reap(first) == []  # its lock lasts until this outer transaction ends
            assert reap(second) is None
        assert reap(second) == []


def owner_pid(client: Client, job_id: int) -> int | None:
    job = client.get(job_id)
    return int(job.lease_owner.split(":")[1]) if job and job.lease_owner else None


def all_owners(client: Client, ids: list[int]) -> list[str] | None:
    owners = [job.lease_owner if (job := client.get(i)) else None for i in ids]
    return None if None in owners else [o for o in owners if o]


@pytest.mark.slow
def test_a_direct_connection_keeps_listen_and_raises_no_alarm(
    start_daemon: StartDaemon, client: Client
) -> None:
    daemon = start_daemon("--workers", "1", ERRANDS_PGBOUNCER="0")
    daemon.wait_for_workers(1)
    job = client.enqueue("record")
    wait_for(lambda: all_completed(client, [job.id]), what="the job to complete")
    events = daemon.log_events()
    assert MISCONFIGURED not in [e.get("event") for e in events]
    assert {e["wakeups"] for e in events if e.get("event") == "worker started"} == {"listen"}
