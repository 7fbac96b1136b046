"""pgbench on the same PostgreSQL: the yardstick every figure is divided by."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

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


def _connection_args(url: str) -> list[str]:
    params = conninfo_to_dict(url)
    args = []
    for key, flag in (("host", "-h"), ("port", "-p"), ("user", "-U")):
        if params.get(key):
            args += [flag, str(params[key])]
    return [*args, str(params.get("dbname", "postgres"))]


def initialise(url: str) -> None:
    """Create pgbench's tables (scale 1) and the single-INSERT table."""
    pgbench = find_pgbench()
    subprocess.run([pgbench, "-i", "-q", *_connection_args(url)], check=True, capture_output=True)
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
    out = subprocess.run(
        [find_pgbench(), "-n", *args, *_connection_args(url)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"tps = ([\d.]+)", out)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{out}")
    return float(match.group(1))
