"""Forking a child process, and what the supervisor remembers about each one."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from errands import tracing
from errands.errors import ConfigurationError, scrub
from errands.log import get_logger

EXIT_STARTUP = 3  # the child could not start (e.g. a task module failed to import)
EXIT_ORPHANED = 5  # the supervisor died
ORPHAN_CHECK_SECONDS = 0.25
ORPHAN_LOG_SECONDS = 0.5  # the longest an orphan waits for its last log line to be written

_log = get_logger("errands.supervisor")


@dataclass
class Slot:
    """A place for one child; it outlives the processes that fill it in turn."""

    kind: str  # "worker", "http" or "scheduler"
    number: int
    crashes: int = 0  # consecutive quick deaths, for the restart backoff
    start_after: float = 0.0  # monotonic time before which it must not be restarted

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.number}"


@dataclass
class Child:
    slot: Slot
    pid: int
    worker_id: str | None  # the lease owner, for a worker child
    status_fd: int  # the child writes why it failed here: one line, then its traceback
    started: float = field(default_factory=time.monotonic)
    report: str = ""

    @property
    def reason(self) -> str:
        return self.report.partition("\n")[0].strip()

    @property
    def traceback(self) -> str:
        return self.report.partition("\n")[2].strip()

    def read_status(self) -> None:
        try:
            data = os.read(self.status_fd, 65536)
        except OSError:
            return
        self.report += data.decode("utf-8", "replace")

    def close(self) -> None:
        self.read_status()
        os.close(self.status_fd)


def fork_child(slot: Slot, main: Callable[[], int], inherited_fds: Iterable[int]) -> Child:
    """Fork a child that runs `main` and exits with its return code, never returning here."""
    status_r, status_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(status_w)
        os.set_blocking(status_r, False)
        return Child(slot, pid, None, status_r)
    _become_child(inherited_fds, status_r)
    _exit_when_orphaned(slot, os.getppid())
    code = 1
    try:
        code = main()
    except BaseException as exc:
        code = EXIT_STARTUP if isinstance(exc, ConfigurationError) else 1
        # Told to the supervisor, which logs it: one child failing as its siblings do (a
        # broken task module fails every worker) does not repeat the traceback.
        with contextlib.suppress(BaseException):  # a closed pipe must not keep us alive
            first_line = f"{type(exc).__name__}: {exc}".splitlines()[0]
            report = scrub(f"{first_line}\n{traceback.format_exc()}", exc)  # never a row
            os.write(status_w, report.encode()[:65536])
    finally:
        with contextlib.suppress(BaseException):
            tracing.flush()  # os._exit runs no atexit handler, the SDK's exporters' included
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # never run the supervisor's cleanup (atexit, finalizers) in a child


def _become_child(inherited_fds: Iterable[int], status_r: int) -> None:
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in (*inherited_fds, status_r):
        with contextlib.suppress(OSError):
            os.close(fd)


def _exit_when_orphaned(slot: Slot, supervisor_pid: int) -> None:
    """A child outliving its supervisor would hold jobs and ports nobody watches: exit.

    Exiting must not depend on any I/O: the supervisor often died because its
    output went away (`errands run | head`), and a write to that pipe raises or
    blocks. The log line is a courtesy, given half a second at most.
    """

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(ORPHAN_CHECK_SECONDS)
        threading.Timer(ORPHAN_LOG_SECONDS, os._exit, (EXIT_ORPHANED,)).start()
        with contextlib.suppress(BaseException):
            # Its jobs go back to pending when their leases expire (the next reaper).
            _log.error("supervisor is gone; exiting", child=slot.name, pid=os.getpid())
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="errands-orphan-watch", daemon=True).start()


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
