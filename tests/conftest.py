"""The test bed: a real PostgreSQL, and an isolated database for every test.

`ERRANDS_TEST_DATABASE_URL` names a server to use; without it the session starts
the embedded PostgreSQL in a temporary directory (fsync off: the tests check
behaviour, not durability across power loss) and stops it at the end. Each test
gets a database cloned from a migrated template, which takes milliseconds.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import structlog
import uvicorn
from hypothesis import HealthCheck, settings
from psycopg.conninfo import make_conninfo

from errands import Client, embedded
from errands.api.app import create_app
from errands.api.backend import MAX_IN_FLIGHT
from errands.api.server import config as server_config
from errands.api.transport import DEFAULT_LIMITS, Limits
from errands.errors import ConfigurationError
from errands.harness.pgbouncer import PgBouncer
from errands.harness.process import DaemonProcess, free_port
from errands.harness.waiting import wait_for
from errands.log import QUIET_LOGGERS
from errands.registry import task_defaults
from errands.schema.migrator import migrate
from tests.clients import client_kind, enqueue_task, portal
from tests.daemon import Daemon

__all__ = [
    "client_kind",
    "enqueue_task",
    "portal",
]  # fixtures of tests/clients.py, for every module

settings.register_profile(
    "errands", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("errands")

TEMPLATE = "errands_test_template"


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """Whatever a test configures of logging (an in-process command configures structlog
    and the root logger, as errands' processes do) is undone after it, so that no test
    sees another's set-up: the library-mode logging tests then hold in any order."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    configured = structlog.is_configured()
    yield
    if not configured and structlog.is_configured():
        structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in quiet.items():
        logging.getLogger(name).setLevel(was)


ServeApi = Callable[..., httpx.Client]
_numbers = itertools.count()


@dataclass
class Server:
    url: str
    pgdata: Path | None  # known when this session started the server itself


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """The PostgreSQL server of this session."""
    url = os.environ.get("ERRANDS_TEST_DATABASE_URL")
    if url:
        yield Server(url, None)
        return
    with tempfile.TemporaryDirectory(prefix="errands-test-") as tmp:
        Path(tmp).chmod(0o755)  # pgserver, as root, runs PostgreSQL as another user
        pgdata = Path(tmp) / "pgdata"
        url = embedded.start(pgdata)
        with psycopg.connect(url, autocommit=True) as conn:
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(f"alter system set {setting} = off")
            conn.execute("select pg_reload_conf()")
        try:
            yield Server(url, pgdata)
        finally:
            embedded.stop(pgdata)


@pytest.fixture(scope="session")
def server_url(server: Server) -> str:
    return server.url


NO_PGBOUNCER = "ERRANDS_TEST_NO_PGBOUNCER"


@pytest.fixture(scope="session")
def pgbouncer(server: Server) -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction pooling mode in front of the session's PostgreSQL.

    Missing, it fails the tests that need it, saying how to install it, unless
    ERRANDS_TEST_NO_PGBOUNCER=1 opts out (they are skipped then).
    """
    try:
        bouncer = PgBouncer(server.url).start()
    except ConfigurationError as exc:
        if os.environ.get(NO_PGBOUNCER) == "1":
            pytest.skip(f"{exc} ({NO_PGBOUNCER}=1)")
        pytest.fail(f"{exc}; or set {NO_PGBOUNCER}=1 to skip the tests through PgBouncer")
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def bouncer_url(pgbouncer: PgBouncer, db_url: str) -> str:
    """This test's database, through PgBouncer in transaction pooling mode."""
    return pgbouncer.url(db_url)


@pytest.fixture
def restart_database(server: Server) -> Callable[[], None]:
    """Restart the session's PostgreSQL (fast shutdown), as an operator or a crash would."""
    if server.pgdata is None:
        pytest.skip(
            "needs the embedded server: ERRANDS_TEST_DATABASE_URL names one we cannot restart"
        )
    return partial(embedded.restart, server.pgdata)


@pytest.fixture
def database_down(server: Server) -> Callable[[], AbstractContextManager[None]]:
    """Stop the session's PostgreSQL for a `with` block, as a host still booting would."""
    pgdata = server.pgdata
    if pgdata is None:
        pytest.skip("needs the embedded server: ERRANDS_TEST_DATABASE_URL names one we cannot stop")

    @contextmanager
    def down() -> Iterator[None]:
        embedded.stop(pgdata)
        try:
            yield
        finally:
            embedded.start_again(pgdata)

    return down


@pytest.fixture(scope="session")
def template_url(server_url: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {TEMPLATE} with (force)")
        conn.execute(f"create database {TEMPLATE}")
    url = make_conninfo(server_url, dbname=TEMPLATE)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    return url


@contextlib.contextmanager
def migrated_database(server_url: str) -> Iterator[str]:
    """A fresh database cloned from the migrated template, dropped on leaving."""
    name = f"errands_test_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"create database {name} template {TEMPLATE}")
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def db_url(server_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    with migrated_database(server_url) as url:
        yield url


@pytest.fixture
def other_db_url(server_url: str, template_url: str) -> Iterator[str]:
    """A second fresh, migrated database, for what must differ between two deployments."""
    with migrated_database(server_url) as url:
        yield url


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """A fresh database without the errands schema."""
    name = f"errands_empty_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def client(db_url: str) -> Iterator[Client]:
    with Client(db_url) as c:
        yield c


@pytest.fixture
def start_daemon(db_url: str, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start `errands run` on this test's database; every daemon is stopped afterwards."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "create table if not exists test_executions ("
            " job_id bigint, attempt int, pid int, at timestamptz default clock_timestamp())"
        )
    started: list[Daemon] = []

    def start(*args: str, **env: str) -> Daemon:
        daemon = Daemon(db_url, tmp_path / f"daemon-{len(started)}.log", *args, **env).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def serve_api(db_url: str) -> Iterator[ServeApi]:
    """Start the API on a free port (the real server, on a thread); returns an HTTP client."""
    servers: list[tuple[uvicorn.Server, threading.Thread, httpx.Client]] = []

    def start(
        tokens: tuple[str, ...] = (),
        url: str = db_url,
        limits: Limits = DEFAULT_LIMITS,
        max_in_flight: int = MAX_IN_FLIGHT,
        ui: bool = True,
        pgbouncer: bool = False,
        forwarded_allow_ips: str | None = None,
        secret_key: str | None = None,
    ) -> httpx.Client:
        port = free_port()
        app = create_app(
            url,
            tokens,
            lease_seconds=30,
            max_in_flight=max_in_flight,
            ui=ui,
            pgbouncer=pgbouncer,
            defaults=task_defaults,  # as the command that loaded the task modules passes them
            secret_key=secret_key,
        )
        # The production server's settings (protocol, limits, loop), on a thread.
        server = uvicorn.Server(
            server_config(app, limits, forwarded_allow_ips, host="127.0.0.1", port=port)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.01)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        servers.append((server, thread, http))
        return http

    yield start
    for server, thread, http in servers:
        http.close()
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def api(serve_api: ServeApi) -> httpx.Client:
    return serve_api()


@dataclass
class ApiProcess:
    """The real `errands api` command, on a free port of the loopback."""

    process: DaemonProcess
    port: int
    http: httpx.Client


@pytest.fixture
def api_process(db_url: str, tmp_path: Path) -> Iterator[ApiProcess]:
    port = free_port()
    env = {**os.environ, "ERRANDS_DATABASE_URL": db_url, "ERRANDS_LOG_FORMAT": "json"}
    args = ["api", "--host", "127.0.0.1", "--port", str(port)]
    process = DaemonProcess(args, env, tmp_path / "api.log").start()
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def healthy() -> bool | None:
        assert process.running(), "errands api exited"
        with contextlib.suppress(httpx.TransportError):
            return http.get("/health").status_code == 200 or None
        return None

    wait_for(healthy, what="errands api")
    try:
        yield ApiProcess(process, port, http)
    finally:
        http.close()
        process.kill()
