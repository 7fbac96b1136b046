"""Run the real `errands run` as a subprocess and watch it through the database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

TESTS = Path(__file__).parent
T = TypeVar("T")

FAST = {
    "ERRANDS_LEASE_SECONDS": "2",
    "ERRANDS_POLL_SECONDS": "0.2",
    "ERRANDS_REAPER_SECONDS": "0.3",
    "ERRANDS_GRACE_SECONDS": "5",
}


def wait_for(check: Callable[[], T | None], timeout: float = 20, what: str = "") -> T:
    """Poll `check` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.05)


class Daemon:
    def __init__(self, db_url: str, log_path: Path, *args: str, **env: str) -> None:
        self.db_url = db_url
        self.log_path = log_path
        self.args = ["--no-http", *args]
        self.env = {
            **os.environ,
            "ERRANDS_DATABASE_URL": db_url,
            "ERRANDS_TASKS": "daemon_tasks",
            "ERRANDS_LOG_FORMAT": "json",
            "PYTHONPATH": str(TESTS),
            **FAST,
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "errands", "run", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our signals only, never the terminal's
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        try:
            return self.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            raise

    def wait_for_workers(self, count: int) -> list[int]:
        """Pids of `count` live workers of this daemon, once they have announced themselves."""

        def pids() -> list[int] | None:
            found = [pid for pid in self.query("select pid from errands_workers")]
            mine = [pid for (pid,) in found if _parent_of(pid) == self.pid]
            return mine if len(mine) >= count else None

        return wait_for(pids, what=f"{count} workers")

    def query(self, sql: str, params: Any = None) -> list[Any]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a traceback printed by a child, say
        return events


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
