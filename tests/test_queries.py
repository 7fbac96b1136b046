"""The named statements as they are sent: compact, and short enough for psycopg to keep."""

from __future__ import annotations

import psycopg._queries
import pytest

from errands.queue.queries import _all, compact


def test_comments_and_indentation_are_dropped_and_lines_kept() -> None:
    sql = "select a,  -- the first\n    -- a whole line\n    b\nfrom t  -- trailing"
    assert compact(sql) == "select a,\nb\nfrom t"


@pytest.mark.parametrize("quoted", ["'a -- b'", "'it''s -- here'", '"odd--name"', "'two\n  lines'"])
def test_quoted_text_is_kept_whole(quoted: str) -> None:
    assert compact(f"select {quoted} -- said\n") == f"select {quoted}"


def test_a_per_cent_sign_in_a_comment_never_reaches_psycopg() -> None:
    assert "%" not in compact("select 1 -- 100 % sure, %(not)s a placeholder")


@pytest.mark.parametrize("name", sorted(_all()))
def test_every_statement_is_short_enough_for_psycopg_to_keep_its_conversion(name: str) -> None:
    # psycopg converts a longer statement anew at every execution, scanning it for placeholders
    # (the claim, commented, took about a quarter of the client's CPU per claim of 25 jobs).
    assert len(_all()[name]) <= psycopg._queries.MAX_CACHED_STATEMENT_LENGTH
