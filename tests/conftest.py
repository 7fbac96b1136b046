"""The test bed: a real PostgreSQL, and an isolated database for every test.

`ERRANDS_TEST_DATABASE_URL` names a server to use; without it the session starts
the embedded PostgreSQL in a temporary directory (fsync off: the tests check
behaviour, not durability across power loss) and stops it at the end. Each test
gets a database cloned from a migrated template, which takes milliseconds.
"""

from __future__ import annotations

import itertools
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from psycopg.conninfo import make_conninfo

from errands import Client, embedded
from errands.schema import migrate

settings.register_profile(
    "errands", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("errands")

TEMPLATE = "errands_test_template"
_numbers = itertools.count()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The PostgreSQL server of this session, as a URL to its maintenance database."""
    url = os.environ.get("ERRANDS_TEST_DATABASE_URL")
    if url:
        yield url
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
            yield url
        finally:
            _stop(pgdata)


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def _stop(pgdata: Path) -> None:
    os.kill(_postmaster_pid(pgdata), signal.SIGINT)  # fast shutdown


@pytest.fixture(scope="session")
def template_url(server_url: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {TEMPLATE} with (force)")
        conn.execute(f"create database {TEMPLATE}")
    url = make_conninfo(server_url, dbname=TEMPLATE)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    return url


@pytest.fixture
def db_url(server_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"errands_test_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"create database {name} template {TEMPLATE}")
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")


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
