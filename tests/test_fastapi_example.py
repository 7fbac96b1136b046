"""The FastAPI example of docs/guides/fastapi.md, as written: under uvicorn, with a real daemon."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from errands.harness.waiting import wait_for
from tests.daemon import Daemon
from tests.guides import blocks, uvicorn_app, write_files

pytestmark = pytest.mark.slow


@pytest.fixture
def shop_dir(tmp_path: Path, db_url: str) -> Path:
    """The guide's files, and its tables in the test's database."""
    directory = tmp_path / "shop"
    directory.mkdir()
    assert write_files("fastapi", directory) == ["tasks.py", "app.py"]
    (schema,) = blocks("fastapi", "sql")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(schema)
    return directory


def shop_env(db_url: str, directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    return {**env, "DATABASE_URL": db_url, "PYTHONPATH": str(directory)}


@pytest.fixture
def shop(shop_dir: Path, db_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    with uvicorn_app(shop_dir, shop_env(db_url, shop_dir), tmp_path / "app.log") as http:
        yield http


def query(db_url: str, sql: str) -> list[Any]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_an_order_and_its_job_commit_together_and_a_real_worker_runs_the_job(
    shop: httpx.Client, shop_dir: Path, db_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    start_daemon(ERRANDS_TASKS="tasks", PYTHONPATH=str(shop_dir), DATABASE_URL=db_url)
    placed = shop.post("/orders", json={"item": "tea", "quantity": 2})
    assert placed.status_code == 201
    job_id = placed.json()["job"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = shop.get(f"/jobs/{job_id}").json()
        return job if job["state"] == "completed" else None

    job = wait_for(finished, what="the receipt job")
    assert job["result"] == f"receipt for order {placed.json()['order']} sent"
    assert query(db_url, "select receipt_sent from orders") == [(True,)]


def test_an_order_rolled_back_leaves_no_job(shop: httpx.Client, db_url: str) -> None:
    refused = shop.post("/orders", json={"item": "tea", "quantity": 99})
    assert refused.status_code == 409
    assert query(db_url, "select count(*) from orders") == [(0,)]
    assert query(db_url, "select count(*) from errands_jobs") == [(0,)]
    assert shop.post("/orders", json={"item": "tea", "quantity": 1}).status_code == 201
    assert query(db_url, "select count(*) from errands_jobs") == [(1,)]
