"""Run the real `errands run` for a test, and watch it through the database."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg

from errands.harness.process import DaemonProcess
from errands.harness.waiting import wait_for

TESTS = Path(__file__).parent

FAST = {
    "ERRANDS_LEASE_SECONDS": "2",
    "ERRANDS_POLL_SECONDS": "0.2",
    "ERRANDS_REAPER_SECONDS": "0.3",
    "ERRANDS_GRACE_SECONDS": "5",
}


class Daemon(DaemonProcess):
    """`errands run` on a test's database, with short leases and test tasks.

    Without `--port` among its arguments it runs without the HTTP child.
    """

    def __init__(self, db_url: str, log_path: Path, *args: str, **env: str) -> None:
        super().__init__(
            ["run", *args] if "--port" in args else ["run", "--no-http", *args],
            {
                **os.environ,
                "ERRANDS_DATABASE_URL": db_url,
                "ERRANDS_TASKS": "daemon_tasks",
                "ERRANDS_LOG_FORMAT": "json",
                "PYTHONPATH": str(TESTS),
                **FAST,
                **env,
            },
            log_path,
        )
        self.db_url = db_url

    def wait_for_workers(self, count: int) -> list[int]:
        """Pids of `count` live workers of this daemon, once they have announced themselves."""

        def announced() -> list[int] | None:
            mine = set(self.children())
            pids = [pid for (pid,) in self.query("select pid from errands_workers") if pid in mine]
            return pids if len(pids) >= count else None

        return wait_for(announced, what=f"{count} workers")

    def query(self, sql: str, params: Any = None) -> list[Any]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()
