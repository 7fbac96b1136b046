"""A private PostgreSQL for development, started when no database URL is configured.

It runs from the `pgserver` package (the `errands[embedded]` extra), listens on a
Unix socket inside its data directory only, and is shared by every process on
the machine that names the same directory. It keeps running after errands
exits, so the next start is instant; it is a development database, never a
production one.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

from errands.errors import ConfigurationError

NOT_RUNNING = (
    "No database: set ERRANDS_DATABASE_URL (or DATABASE_URL) to a PostgreSQL URL, or start "
    "`errands run` (`make run`), which starts the embedded development database in "
    "{data_dir}; this command uses it while it runs and never starts a server of its own."
)
_MISSING = (
    "No database configured: set ERRANDS_DATABASE_URL (or DATABASE_URL) to a PostgreSQL URL, "
    "or install the development extra, pip install 'errands[embedded]', to let errands start "
    "a private PostgreSQL."
)


def default_data_dir() -> Path:
    """Where the embedded database lives unless ERRANDS_DATA_DIR says otherwise.

    As root, pgserver runs PostgreSQL as a separate system user and opens every
    parent directory of the data directory to all users (chmod o+rx); under
    /var/lib that changes nothing, whereas under /root it would expose root's home.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/errands/pgdata")
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "errands" / "pgdata"


def start(data_dir: str | os.PathLike[str] | None = None) -> str:
    """Start (or join) the embedded PostgreSQL; returns its connection URL.

    Only `errands run` calls it (docs/reference/configuration.md).
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        try:
            from pgserver import postgres_server  # noqa: PLC0415 - an optional extra
        except ImportError:
            raise ConfigurationError(_MISSING) from None

    pgdata = Path(data_dir) if data_dir else default_data_dir()
    pgdata = pgdata.expanduser().absolute()
    pgdata.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if os.geteuid() == 0:
        _refuse_private_parents(pgdata)
    postgres_server.get_server(pgdata, cleanup_mode=None)
    url = url_if_running(pgdata)
    assert url is not None, "pgserver returns once the server is ready"
    return url


def url_if_running(data_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The URL of the embedded PostgreSQL of `data_dir` if it runs and accepts connections.

    Read from its postmaster.pid (PostgreSQL's own format: pid, data directory, start
    time, port, socket directory, listen address, shared memory, status), so that
    joining a running server can never start one.
    """
    pid_file = Path(data_dir or default_data_dir()).expanduser() / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port, socket_dir, status = int(lines[0]), lines[3], lines[4], lines[7]
    except (OSError, ValueError, IndexError):
        return None
    if status.strip() != "ready" or not _alive(pid):
        return None
    return f"postgresql://postgres:@/postgres?host={socket_dir.strip()}&port={port.strip()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, run by another user (pgserver's, as root)
    return True


def _refuse_private_parents(pgdata: Path) -> None:
    """Stop before pgserver, running as root, makes a private directory world-readable."""
    opened = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    private = [p for p in pgdata.parents if p.stat().st_mode & opened != opened]
    if private:
        raise ConfigurationError(
            f"Refusing to start the embedded PostgreSQL in {pgdata}: running as root, pgserver "
            f"would make {', '.join(map(str, private))} readable by every user. Choose an "
            "ERRANDS_DATA_DIR whose parent directories are already world-readable, such as "
            "/var/lib/errands/pgdata."
        )


def stop(data_dir: str | os.PathLike[str]) -> None:
    """Fast shutdown of the embedded PostgreSQL (SIGINT to the postmaster), waiting for it."""
    pid_file = Path(data_dir) / "postmaster.pid"
    os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
    deadline = time.monotonic() + 30
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def restart(data_dir: str | os.PathLike[str]) -> None:
    """Fast shutdown and start again, as an operator or a crash would."""
    stop(data_dir)
    start_again(data_dir)


def start_again(data_dir: str | os.PathLike[str]) -> None:
    """Start a stopped embedded PostgreSQL.

    In a new process: pgserver remembers, per process, the servers it has started.
    """
    code = f"from errands import embedded; embedded.start({str(data_dir)!r})"
    subprocess.run([sys.executable, "-c", code], check=True)
