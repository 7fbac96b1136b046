"""The schema comes up on a fresh database, once, however many processes try."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from errands.schema import applied_versions, available_migrations, migrate


def test_fresh_database_gets_every_migration(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        applied = migrate(conn)
        assert [m.version for m in applied] == [m.version for m in available_migrations()]
        assert applied_versions(conn) == {m.version for m in available_migrations()}
        assert conn.execute("select to_regclass('errands_jobs')").fetchone() == ("errands_jobs",)


def test_running_migrations_again_changes_nothing(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        migrate(conn)
        assert migrate(conn) == []


def test_two_processes_migrating_at_once_apply_each_migration_once(empty_db_url: str) -> None:
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def run() -> None:
        with psycopg.connect(empty_db_url, autocommit=True) as conn:
            barrier.wait()
            results.append(migrate(conn))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(len(applied) for applied in results) == [0, len(available_migrations())]
    with psycopg.connect(empty_db_url) as conn:
        rows = conn.execute("select version from errands_migrations").fetchall()
    assert sorted(v for (v,) in rows) == [m.version for m in available_migrations()]
