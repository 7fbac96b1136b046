"""The limits guide's Python examples run as written, in order, against a database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from errands import Client
from errands.client import default_client, set_default_client

GUIDE = Path(__file__).parent.parent / "docs" / "guides" / "limits.md"


def test_the_limits_guide_examples_run_against_a_database(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert len(blocks) >= 4
    monkeypatch.setenv("ERRANDS_DATABASE_URL", db_url)
    previous = default_client()
    with Client(db_url) as client:
        set_default_client(client)
        try:
            namespace: dict[str, object] = {"__name__": "limits_guide"}
            for block in blocks:
                exec(compile(block, str(GUIDE), "exec"), namespace)
            stored = client.list(limit=1000)
        finally:
            set_default_client(previous)
    assert sum(j.task == "call_partner" for j in stored) == 20
    assert sum(j.task == "reindex" for j in stored) == 2
