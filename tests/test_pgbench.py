"""pgbench, the yardstick of `errands bench`, reaches any database a URL names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from errands.errors import ConfigurationError
from errands.harness import pgbench
from tests.conftest import Server

ROLE, PASSWORD = "errands_bench_pw", "s3cret-Pass"


@pytest.fixture
def password_url(server: Server, db_url: str) -> Iterator[str]:
    """This test's database as a role that must give its password (scram-sha-256)."""
    if server.pgdata is None:
        pytest.skip("needs the embedded server: its pg_hba.conf is edited")
    hba = Path(server.pgdata) / "pg_hba.conf"
    original = hba.read_text()
    # First match wins: this role alone must authenticate, everyone else stays trusted.
    hba.write_text(f"local all {ROLE} scram-sha-256\nhost all {ROLE} all scram-sha-256\n{original}")
    with psycopg.connect(server.url, autocommit=True) as admin:
        admin.execute(f"create role {ROLE} login password '{PASSWORD}'")
        admin.execute("select pg_reload_conf()")
    dbname = conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(f"grant all on schema public to {ROLE}")
        owner.execute(f"grant all on database {dbname} to {ROLE}")
    try:
        yield make_conninfo(db_url, user=ROLE, password=PASSWORD)
    finally:
        hba.write_text(original)
        with psycopg.connect(server.url, autocommit=True) as admin:
            admin.execute("select pg_reload_conf()")
        with psycopg.connect(db_url, autocommit=True) as owner:
            owner.execute(f"drop owned by {ROLE}")
        with psycopg.connect(server.url, autocommit=True) as admin:
            admin.execute(f"drop role {ROLE}")


def test_pgbench_runs_on_a_database_whose_url_carries_a_password(password_url: str) -> None:
    pgbench.initialise(password_url)
    assert pgbench.tps_simple_update(password_url, clients=1, seconds=1) > 0


def test_a_refused_pgbench_is_one_clear_error_without_the_password(password_url: str) -> None:
    wrong = make_conninfo(password_url, password="not-it")
    with pytest.raises(ConfigurationError, match="pgbench failed") as refused:
        pgbench.initialise(wrong)
    assert "not-it" not in str(refused.value)
