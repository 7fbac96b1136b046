"""docs/guides/running-jobs.md runs as written: its task module under the real daemon, and
its script beside it (the script asserts what the guide says)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import Daemon

GUIDE = Path(__file__).parent.parent / "docs" / "guides" / "running-jobs.md"
pytestmark = pytest.mark.slow


def files_of(guide: Path) -> dict[str, str]:
    """The guide's code blocks that name a file (```python title="name.py"), by name."""
    blocks = re.findall(r'^```python title="([\w.]+)"\n(.*?)^```$', guide.read_text(), re.M | re.S)
    return dict(blocks)


def test_the_guides_examples_run_as_written(
    start_daemon: Callable[..., Daemon], db_url: str, tmp_path: Path
) -> None:
    files = files_of(GUIDE)
    assert set(files) == {"billing.py", "shop.py"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    start_daemon("--workers", "1", ERRANDS_TASKS="billing", PYTHONPATH=str(tmp_path))
    shop = subprocess.run(
        [sys.executable, "shop.py"],
        cwd=tmp_path,
        env={**os.environ, "ERRANDS_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shop.returncode == 0, shop.stderr
    assert shop.stdout.splitlines()[-1] == "done"
