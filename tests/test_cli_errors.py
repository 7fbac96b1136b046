"""The CLI refuses bad values and reports database errors in one line: `errands: ...`.

Usage errors (a value out of range, not a number, not finite) exit 2; errors of the
work itself (a refused job, an unreachable database, a refused login) exit 1. Never a
traceback, never the row a database error quotes, never a password.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from errands import Client
from errands.cli import main
from errands.harness.process import free_port
from tests.conftest import Server
from tests.test_cli import errands


def assert_refused(result: subprocess.CompletedProcess[str], code: int, *named: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("errands: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for name in named:
        assert name in result.stderr, (name, result.stderr)


OUT_OF_RANGE = [
    (["prune", "--older-than", "-1"], "--older-than"),
    (["prune", "--older-than", "nan"], "--older-than"),
    (["prune", "--older-than", "1e400"], "--older-than"),
    (["jobs", "list", "--after", "-1"], "--after"),
    (["jobs", "list", "--after", str(2**63)], "--after"),
    (["jobs", "list", "--limit", "0"], "--limit"),
    (["jobs", "list", "--limit", "٣"], "--limit"),  # an Arabic-Indic digit
    (["jobs", "show", "--", "-5"], "JOB_ID"),
    (["jobs", "retry", str(2**64)], "JOB_ID"),
    (["enqueue", "t", "--delay", "inf"], "--delay"),
    (["enqueue", "t", "--priority", str(2**31)], "--priority"),
    (["enqueue", "t", "--max-attempts", "0"], "--max-attempts"),
    (["enqueue", "t", "[" * 100_000], "PAYLOAD"),  # nested too deeply for Python's parser
    (["enqueue", "t", '{"n": ' + "9" * 5000 + "}"], "PAYLOAD"),  # over 4,300 digits
    (["run", "--workers", "0"], "--workers"),
    (["run", "--lease", "inf"], "--lease"),
    (["chaos", "--duration", "nan"], "--duration"),
]


@pytest.mark.parametrize(
    ("args", "option"), OUT_OF_RANGE, ids=[" ".join(args)[:40] for args, _ in OUT_OF_RANGE]
)
def test_an_out_of_range_value_is_a_usage_error(
    db_url: str, client: Client, args: list[str], option: str
) -> None:
    job = client.enqueue("t")
    client.cancel(job.id)
    assert_refused(errands(db_url, *args, check=False), 2, option)
    assert client.get(job.id) is not None  # prune --older-than -1 once deleted every finished job


@settings(max_examples=60)
@given(
    option=st.sampled_from(["--after", "--limit"]),
    value=st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=2**63),
        st.floats(),
        # Not ASCII digits (Unicode digits included); no NUL, which argv cannot carry.
        st.text(st.characters(exclude_characters="\x00"), min_size=1).filter(
            lambda t: not t.startswith("-") and not re.fullmatch(r"[+-]?[0-9]+", t)
        ),
    ).map(str),
)
def test_any_bad_list_value_is_a_usage_error(option: str, value: str) -> None:
    """The same entry point in this process (a subprocess per example would take minutes)."""
    stderr = io.StringIO()
    with (
        mock.patch.object(sys, "argv", ["errands", "jobs", "list", option, value]),
        contextlib.redirect_stderr(stderr),
        pytest.raises(SystemExit) as exited,
    ):
        main()
    result = subprocess.CompletedProcess([], int(exited.value.code or 0), "", stderr.getvalue())
    assert_refused(result, 2, option)


def test_a_job_the_queue_refuses_is_one_line_and_exit_1(db_url: str, client: Client) -> None:
    result = errands(db_url, "enqueue", "bad name", '{"to": "x"}', check=False)
    assert_refused(result, 1, "task")
    result = errands(db_url, "jobs", "list", "--queue", "bad queue", check=False)
    assert_refused(result, 1, "queue")
    assert client.list() == []


def test_a_database_refusal_never_prints_the_row(db_url: str, client: Client) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "alter table errands_jobs add constraint no_card_numbers check (not payload ? 'card')"
        )
    result = errands(db_url, "enqueue", "charge", '{"card": "4111111111111111"}', check=False)
    assert_refused(result, 1, "no_card_numbers")
    assert "4111" not in result.stderr + result.stdout
    assert client.list() == []


# -- database errors -------------------------------------------------------------------------


def test_a_url_that_is_not_a_url_is_a_usage_error(db_url: str) -> None:
    result = errands("this is not a url", "stats", check=False)
    assert_refused(result, 2, "ERRANDS_DATABASE_URL")
    result = errands(
        db_url, "--database-url", "postgresql://u:pw@h/d?nonsense=1", "stats", check=False
    )
    assert_refused(result, 2, "--database-url")
    assert "pw" not in result.stderr.replace("password", "")


@pytest.mark.parametrize("command", [["stats"], ["jobs", "list"], ["prune"], ["migrate"]])
def test_an_unreachable_database_is_one_line_and_exit_1(command: list[str]) -> None:
    url = f"postgresql://errands:s3cr3t-pw@127.0.0.1:{free_port()}/errands?connect_timeout=2"
    result = errands(url, *command, check=False)
    assert_refused(result, 1, "database unavailable", "127.0.0.1")
    assert "s3cr3t-pw" not in result.stderr


def test_an_unknown_database_or_role_is_one_line_and_exit_1(db_url: str) -> None:
    for changed in ({"dbname": "no_such_database"}, {"user": "no_such_role"}):
        result = errands(make_conninfo(db_url, **changed), "stats", check=False)
        assert_refused(result, 1, "database unavailable", next(iter(changed.values())))


@pytest.fixture
def password_role(server: Server, db_url: str) -> Iterator[str]:
    """A role that must log in with its password (the test server trusts local users)."""
    if server.pgdata is None:
        pytest.skip("needs the embedded server, whose pg_hba.conf the test can edit")
    hba = Path(server.pgdata) / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("create role errands_pw_test login password 'right-password'")
        hba.write_text(f"local all errands_pw_test scram-sha-256\n{original}")
        conn.execute("select pg_reload_conf()")
    try:
        yield "errands_pw_test"
    finally:
        hba.write_text(original)
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("select pg_reload_conf()")


def test_a_wrong_password_is_one_line_and_exit_1(db_url: str, password_role: str) -> None:
    url = make_conninfo(db_url, user=password_role, password="wrong-password")
    result = errands(url, "stats", check=False)
    assert_refused(result, 1, "database unavailable", "password authentication failed")
    assert "wrong-password" not in result.stderr
    right = make_conninfo(db_url, user=password_role, password="right-password")
    assert conninfo_to_dict(right)["user"] == password_role
    with psycopg.connect(right) as conn:  # the role itself works: only the password was wrong
        assert conn.execute("select 1").fetchone() == (1,)
