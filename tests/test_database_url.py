"""Client.database_url: the URL a connection of the application's own needs (docs: Use your own
database connection)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from errands import Client, ConfigurationError
from tests.conftest import Server


def test_it_is_the_dsn_given(db_url: str) -> None:
    with Client(db_url) as client:
        assert client.database_url == db_url


def test_without_a_dsn_it_is_errands_database_url(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ERRANDS_DATABASE_URL", db_url)
    with Client() as client:
        assert client.database_url == db_url


def test_it_is_the_embedded_database_while_it_runs(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    if server.pgdata is None:
        pytest.skip("needs the embedded server: ERRANDS_TEST_DATABASE_URL names another")
    monkeypatch.delenv("ERRANDS_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("ERRANDS_DATA_DIR", str(server.pgdata))
    with Client() as client, psycopg.connect(client.database_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_with_no_database_it_names_errands_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ERRANDS_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("ERRANDS_DATA_DIR", str(tmp_path / "none"))
    with Client() as client, pytest.raises(ConfigurationError, match="ERRANDS_DATABASE_URL"):
        _ = client.database_url


def test_a_job_enqueued_on_a_connection_to_it_rolls_back_with_the_transaction(
    client: Client,
) -> None:
    with (
        psycopg.connect(client.database_url) as conn,
        pytest.raises(RuntimeError),
        conn.transaction(),
    ):
        job = client.enqueue("t", conn=conn)
        raise RuntimeError("rolled back")
    assert client.get(job.id) is None
