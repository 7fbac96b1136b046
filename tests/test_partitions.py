"""Faults that close nothing: connections frozen by a proxy, with the real `errands run`.

A frozen connection stays open and delivers nothing, so no error ever comes:
what these tests show, errands does by its own clock. Traces of each attempt
go to files (partition_tasks.py), since the database is cut off too.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from errands import Client, JobState
from errands.database import LazyConnection, dead_peer_settings, with_dead_peer_detection
from errands.harness.partition import PartitionProxy
from errands.harness.process import alive
from errands.harness.waiting import wait_for
from tests.daemon import Daemon

StartDaemon = Callable[..., Daemon]
LEASE = 2.0


@pytest.fixture
def proxy(server_url: str) -> Iterator[PartitionProxy]:
    proxy = PartitionProxy(server_url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def traces(directory: Path, job_id: int, attempt: int) -> list[str]:
    found = sorted(directory.glob(f"{job_id}-{attempt}-*"))
    return [line.split()[0] for f in found for line in f.read_text().splitlines()]


def sockopt(conn: psycopg.Connection[Any], level: int, option: int) -> int:
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        return sock.getsockopt(level, option)


# -- the connections' TCP settings ------------------------------------------------------------


def test_errands_connections_detect_dead_peers_with_settings_from_the_lease(
    proxy: PartitionProxy, db_url: str
) -> None:
    over_tcp = proxy.url(db_url)
    lazy = LazyConnection(over_tcp, lease_seconds=30)
    with Client(over_tcp) as client, client._open_pool().connection() as pooled:
        for conn in (lazy.get(), pooled):
            assert sockopt(conn, socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sockopt(conn, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert sockopt(conn, socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
            assert sockopt(conn, socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            assert sockopt(conn, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000
    lazy.close()


def test_settings_a_url_gives_itself_win(proxy: PartitionProxy, db_url: str) -> None:
    url = with_dead_peer_detection(f"{proxy.url(db_url)} keepalives_idle=42", 30)
    assert psycopg.conninfo.conninfo_to_dict(url)["keepalives_idle"] == "42"
    with psycopg.connect(url) as conn:
        assert sockopt(conn, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 42
        assert sockopt(conn, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000


def test_the_settings_scale_with_the_lease_within_what_libpq_accepts() -> None:
    assert dead_peer_settings(300) == {
        "keepalives": 1,
        "keepalives_idle": 100,
        "keepalives_interval": 33,
        "keepalives_count": 3,
        "tcp_user_timeout": 100_000,
        "connect_timeout": 100,
    }
    short = dead_peer_settings(0.5)
    assert short["keepalives_idle"] == short["keepalives_interval"] == 1
    assert (short["tcp_user_timeout"], short["connect_timeout"]) == (1000, 2)


def test_a_statement_past_its_deadline_fails_instead_of_hanging(
    proxy: PartitionProxy, db_url: str
) -> None:
    lazy = LazyConnection(proxy.url(db_url), lease_seconds=30)
    lazy.get()
    proxy.freeze(os.getpid())
    try:
        with pytest.raises(psycopg.OperationalError), lazy.within(0.3) as conn:
            conn.execute("select 1")
    finally:
        proxy.heal(os.getpid())
        lazy.close()


def test_a_frozen_connection_delivers_nothing_until_healed(
    proxy: PartitionProxy, db_url: str
) -> None:
    with psycopg.connect(proxy.url(db_url), autocommit=True) as conn:
        assert proxy.freeze(os.getpid()) == 1
        answered = threading.Event()
        thread = threading.Thread(
            target=lambda: conn.execute("select 1") and answered.set(), daemon=True
        )
        thread.start()
        assert not answered.wait(0.5)
        proxy.heal(os.getpid())
        assert answered.wait(10)


# -- a worker cut off from PostgreSQL -------------------------------------------------------


def partitioned_daemon(start_daemon: StartDaemon, proxy: PartitionProxy, db_url: str) -> Daemon:
    daemon: Daemon = start_daemon(
        "--workers",
        "1",
        ERRANDS_DATABASE_URL=proxy.url(db_url),
        ERRANDS_TASKS="partition_tasks",
        ERRANDS_LEASE_SECONDS=str(LEASE),
    )
    return daemon


def started(tmp_path: Path, job_id: int) -> bool:
    return "tick" in traces(tmp_path, job_id, 1)


@pytest.mark.slow
def test_a_worker_cut_off_mid_job_stops_its_thread_job_when_the_lease_passes(
    start_daemon: StartDaemon, proxy: PartitionProxy, db_url: str, client: Client, tmp_path: Path
) -> None:
    daemon = partitioned_daemon(start_daemon, proxy, db_url)
    (worker,) = daemon.wait_for_workers(1)
    job = client.enqueue("ticking", {"seconds": 60, "traces": str(tmp_path)})
    wait_for(lambda: started(tmp_path, job.id), what="the job's first tick")

    proxy.freeze(worker)
    # Replaced: the stuck thread dies with its process; the new worker is not cut off.
    wait_for(lambda: not alive(worker), timeout=30, what="the cut-off worker to exit")
    done = client.wait(job.id, timeout=30)

    assert (done.state, done.result, done.attempts) == (JobState.COMPLETED, 2, 2)
    assert "returned" not in traces(tmp_path, job.id, 1)
    fenced = [
        e for e in daemon.log_events() if "running out by this worker's clock" in e.get("event", "")
    ]
    assert [(e["job_id"], e["attempt"]) for e in fenced] == [(job.id, 1)]
    proxy.heal(worker)
    assert daemon.stop() == 0


@pytest.mark.slow
def test_a_worker_cut_off_mid_job_cancels_its_coroutine_and_resumes_once_healed(
    start_daemon: StartDaemon, proxy: PartitionProxy, db_url: str, client: Client, tmp_path: Path
) -> None:
    daemon = partitioned_daemon(start_daemon, proxy, db_url)
    (worker,) = daemon.wait_for_workers(1)
    job = client.enqueue("ticking_async", {"seconds": 60, "traces": str(tmp_path)})
    wait_for(lambda: started(tmp_path, job.id), what="the job's first tick")

    proxy.freeze(worker)
    wait_for(lambda: "cancelled" in traces(tmp_path, job.id, 1), timeout=30, what="cancellation")
    assert alive(worker)
    proxy.heal(worker)
    later = client.enqueue("ticking_async", {"seconds": 0, "traces": str(tmp_path)})
    done = client.wait(job.id, timeout=30)

    assert (done.state, done.result) == (JobState.COMPLETED, 2)
    assert client.wait(later.id, timeout=30).state == JobState.COMPLETED
    assert daemon.wait_for_workers(1) == [worker]  # the same process, claiming again
    assert "returned" not in traces(tmp_path, job.id, 1)
    assert daemon.stop() == 0


@pytest.mark.slow
def test_a_supervisor_cut_off_still_replaces_a_dead_worker_and_its_job_runs_elsewhere(
    start_daemon: StartDaemon, proxy: PartitionProxy, db_url: str, client: Client, tmp_path: Path
) -> None:
    cut_off = partitioned_daemon(start_daemon, proxy, db_url)
    (worker,) = cut_off.wait_for_workers(1)
    job = client.enqueue("ticking", {"seconds": 60, "traces": str(tmp_path)})
    wait_for(lambda: started(tmp_path, job.id), what="the job's first tick")
    elsewhere = start_daemon("--workers", "1", ERRANDS_TASKS="partition_tasks")
    elsewhere.wait_for_workers(1)

    proxy.freeze(cut_off.pid)
    os.kill(worker, 9)
    # Its release hangs on the frozen connection; the restart must not wait for it.
    wait_for(lambda: set(cut_off.children()) - {worker}, timeout=30, what="a new worker")
    done = client.wait(job.id, timeout=30)  # reaped by the other host once the lease passed

    assert (done.state, done.result) == (JobState.COMPLETED, 2)
    proxy.heal(cut_off.pid)
    assert cut_off.stop() == 0
