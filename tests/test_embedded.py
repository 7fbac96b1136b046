"""The embedded development database: clear refusals where it cannot or must not start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from errands import embedded
from errands.errors import ConfigurationError


def test_without_the_extra_and_without_a_url_errands_says_what_to_do(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['pgserver'] = None\n"  # as if errands[embedded] were absent
        "from errands import embedded\n"
        f"embedded.start({str(tmp_path / 'pgdata')!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "ERRANDS_DATABASE_URL" in result.stderr and "errands[embedded]" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the permission change only happens as root")
def test_as_root_it_refuses_to_open_a_private_parent_directory(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ConfigurationError, match="readable by every user"):
        embedded.start(private / "pgdata")
    assert private.stat().st_mode & 0o777 == 0o700


def test_the_default_data_directory_as_root_is_under_var_lib() -> None:
    if os.geteuid() == 0:
        assert embedded.default_data_dir() == Path("/var/lib/errands/pgdata")
    else:
        assert embedded.default_data_dir().parts[-2:] == ("errands", "pgdata")
