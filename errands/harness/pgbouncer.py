"""A real PgBouncer in transaction pooling mode, started in front of a PostgreSQL server.

Tests, `errands chaos` and `errands bench` run errands through it exactly as a
deployment behind a transaction pooler would: every transaction may land on a
different server connection, so no session state survives between them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from errands.errors import ConfigurationError
from errands.harness.process import free_port

INSTALL = "install it (Debian/Ubuntu: apt-get install pgbouncer; macOS: brew install pgbouncer)"
POOL_SIZE = 20


def find_pgbouncer() -> str:
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(found).exists():
        raise ConfigurationError(f"pgbouncer not found: {INSTALL}")
    return found


class PgBouncer:
    """PgBouncer on a free loopback port, pooling every database of `server_url`'s server.

    `url(direct)` turns a direct URL of that server into the same database
    through the pooler. Use as a context manager; `stop()` ends the process.
    """

    def __init__(self, server_url: str, pool_size: int = POOL_SIZE) -> None:
        self.server_url = server_url
        self.pool_size = pool_size
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="errands-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def log_path(self) -> Path:
        return self.dir / "pgbouncer.log"

    def url(self, direct_url: str | None = None) -> str:
        return make_conninfo(direct_url or self.server_url, host="127.0.0.1", port=str(self.port))

    def start(self) -> PgBouncer:
        binary = find_pgbouncer()
        params = conninfo_to_dict(self.server_url)
        user = str(params.get("user") or pwd.getpwuid(os.geteuid()).pw_name)
        host = str(params.get("host") or "/var/run/postgresql")
        upstream = f"host={host} port={params.get('port') or 5432}"
        password = str(params.get("password") or "")
        (self.dir / "userlist.txt").write_text(f'"{user}" "{password}"\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = {upstream}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 2000\n"
            f"default_pool_size = {self.pool_size}\n"
            # A restarted PostgreSQL is reconnected to at once, as a client would retry.
            "server_login_retry = 0.2\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.log_path}\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        command = [binary, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            command[1:1] = ["-u", self._run_as(host)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_until_ready()
        return self

    def _run_as(self, host: str) -> str:
        """An unprivileged user that can reach the server: the owner of its socket directory."""
        owner = "nobody"
        if host.startswith("/"):
            owner = pwd.getpwuid(Path(host).stat().st_uid).pw_name
        uid = pwd.getpwnam(owner).pw_uid
        self.dir.chmod(0o755)
        for path in [self.dir, *self.dir.iterdir()]:
            os.chown(path, uid, -1)
        return owner

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self._log_tail()}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2, prepare_threshold=None) as c:
                    c.execute("select 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start:\n{self._log_tail()}") from None
                time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-2000:]
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # immediate shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
