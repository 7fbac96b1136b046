"""The named SQL statements of `sql/queries.sql`, loaded once.

Keeping SQL in a .sql file (as Procrastinate does) lets it read as SQL, with
its comments, instead of as Python strings.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _all() -> dict[str, bytes]:
    text = resources.files("errands.queue").joinpath("sql/queries.sql").read_text("utf-8")
    parts = _NAME.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {
        name: body.strip().encode() for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def query(name: str) -> bytes:
    """The statement called `name`; bytes, because psycopg accepts them as a query."""
    return _all()[name]
