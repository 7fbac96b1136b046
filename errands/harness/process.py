"""`errands run` as a child process: start it, signal it, find its workers, read its logs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True)
class ProcStat:
    """What /proc/<pid>/stat says about a process that matters here."""

    pid: int
    state: str
    ppid: int
    cpu_seconds: float  # its own user + system time
    children_cpu_seconds: float  # that of its children already waited for

    @classmethod
    def read(cls, pid: int) -> ProcStat | None:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        fields = text.rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
        return cls(pid, fields[0], int(fields[1]), (utime + stime) / tick, (cutime + cstime) / tick)


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    stat = ProcStat.read(pid)
    return stat is not None and stat.state != "Z"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = ProcStat.read(int(entry.name))
            if stat is not None and stat.ppid == pid and stat.state != "Z":
                found.append(stat.pid)
    return sorted(found)


def tree_cpu_seconds(pid: int) -> float:
    """CPU used by a process and all its descendants, dead (and waited for) or alive."""
    stat = ProcStat.read(pid)
    if stat is None:
        return 0.0
    return (
        stat.cpu_seconds
        + stat.children_cpu_seconds
        + sum(tree_cpu_seconds(child) for child in children_of(pid))
    )


def rss_megabytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class DaemonProcess:
    """One `errands run` (or other errands command), in a session of its own."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        program: Sequence[str] = (sys.executable, "-m", "errands"),  # or `manage.py …`
    ) -> None:
        self.args = list(args)
        self.env = dict(env)
        self.log_path = log_path
        self.program = list(program)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.program, *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # our signals only, never the terminal's
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None, "not started"
        return self.process.wait(timeout)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, and the exit code; the whole process group is killed if it hangs."""
        if not self.running():
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the daemon and every process of its session."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()

    def children(self) -> list[int]:
        return children_of(self.pid) if self.running() else []

    def log_events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (run it with ERRANDS_LOG_FORMAT=json)."""
        with self.log_path.open() as log:
            return list(_json_lines(log))


def _json_lines(stream: IO[str]) -> Any:
    for line in stream:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a traceback a child printed, say
        if isinstance(event, dict):
            yield event
