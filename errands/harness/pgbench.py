"""pgbench on the same PostgreSQL: the yardstick every figure is divided by."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from errands.errors import ConfigurationError

_SINGLE_INSERT = (
    'insert into errands_bench_insert (payload) values (\'{"to": "a@example.com"}\');\n'
)
_SINGLE_INSERT_TABLE = (
    "create table if not exists errands_bench_insert (id bigserial primary key, payload jsonb)"
)


def find_pgbench() -> str:
    for candidate in (
        shutil.which("pgbench"),
        "/usr/lib/postgresql/16/bin/pgbench",
        "/usr/lib/postgresql/15/bin/pgbench",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # noqa: PLC0415 - the embedded extra
    except ImportError:
        pass
    else:
        bundled = Path(POSTGRES_BIN_PATH) / "pgbench"
        if bundled.exists():
            return str(bundled)
    raise ConfigurationError(
        "pgbench not found: install PostgreSQL's client tools (Debian: postgresql-client)"
    )


def _pgbench(args: list[str], url: str) -> str:
    """Run pgbench on the database of `url`; what it printed, or a ConfigurationError.

    The whole URL goes as the database name, which libpq reads as connection
    parameters (sslmode and the rest included), except the password: it travels in
    PGPASSWORD, never on a command line every user of the machine can read.
    """
    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    env = {**os.environ, **({"PGPASSWORD": str(password)} if password else {})}
    try:
        return subprocess.run(
            [find_pgbench(), *args, make_conninfo("", **params)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or "").strip().splitlines()[-1:] or [f"exit code {exc.returncode}"]
        raise ConfigurationError(f"pgbench failed on the bench database: {last[0]}") from None


def initialise(url: str) -> None:
    """Create pgbench's tables (scale 1) and the single-INSERT table."""
    _pgbench(["-i", "-q"], url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_SINGLE_INSERT_TABLE)


def tps_simple_update(url: str, clients: int, seconds: float) -> float:
    """`pgbench -N`: the TPC-B-like transaction without the contended branch updates."""
    return _run(
        ["-N", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(round(seconds))], url
    )


def tps_single_insert(url: str, clients: int, seconds: float) -> float:
    """One INSERT of a small JSON row per transaction: the floor under an enqueue."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "insert.sql"
        script.write_text(_SINGLE_INSERT)
        return _run(
            [
                "-f",
                str(script),
                "-c",
                str(clients),
                "-j",
                str(min(clients, 2)),
                "-T",
                str(round(seconds)),
            ],
            url,
        )


def _run(args: list[str], url: str) -> float:
    out = _pgbench(["-n", *args], url)
    match = re.search(r"tps = ([\d.]+)", out)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{out}")
    return float(match.group(1))
