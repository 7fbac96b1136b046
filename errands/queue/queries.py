"""The named SQL statements of `sql/queries.sql`, loaded once.

Keeping SQL in a .sql file (as Procrastinate does) lets it read as SQL, with
its comments, instead of as Python strings. The comments and the indentation
stay in the file: a statement is sent without them. psycopg converts a
statement longer than 4,096 bytes anew at every execution, scanning it for
placeholders (it keeps the conversions of shorter ones): the claim, commented,
is twice that, and the scan took about a quarter of the client's CPU per claim
of 25 jobs (bench/RESULTS.md). Without its comments, a `%` in one cannot be
taken for a placeholder either.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
# A quoted literal or identifier (kept whole, whatever it holds), or a run of blanks, line
# breaks and comments (each to its line's end).
_QUOTED_OR_BLANK = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(?:\s|--[^\n]*)+")


@cache
def _all() -> dict[str, bytes]:
    text = resources.files("errands.queue").joinpath("sql/queries.sql").read_text("utf-8")
    parts = _NAME.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {
        name: compact(body).encode() for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def compact(sql: str) -> str:
    """`sql` without its `--` comments, indentation and empty lines; quoted text untouched."""
    return _QUOTED_OR_BLANK.sub(_compacted, sql).strip()


def _compacted(match: re.Match[str]) -> str:
    """A quoted text as it is; blanks as one line break when they hold one, else one space."""
    text = match.group()
    if text[0] in "'\"":
        return text
    return "\n" if "\n" in text else " "


def query(name: str) -> bytes:
    """The statement called `name`; bytes, because psycopg accepts them as a query."""
    return _all()[name]
