"""The code of the guides in docs/guides, as files: tests run the examples as written.

A guide's Python block whose first line is a comment naming a file
(`# app.py — ...`) is that file.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from errands.harness.process import free_port
from errands.harness.waiting import wait_for

GUIDES = Path(__file__).parent.parent / "docs" / "guides"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_FILE_NAME = re.compile(r"^# (\w+\.py)\b")


def blocks(guide: str, language: str = "python") -> list[str]:
    """The code blocks of `guide` (docs/guides/<guide>.md) in `language`, in order."""
    text = (GUIDES / f"{guide}.md").read_text()
    return [code for lang, code in _BLOCK.findall(text) if lang == language]


def write_files(guide: str, into: Path) -> list[str]:
    """Write the guide's file blocks into `into`; their names."""
    names = []
    for code in blocks(guide):
        match = _FILE_NAME.match(code)
        if match:
            (into / match.group(1)).write_text(code)
            names.append(match.group(1))
    return names


@contextlib.contextmanager
def uvicorn_app(
    directory: Path, env: dict[str, str], log: Path, setup: str = ""
) -> Iterator[httpx.Client]:
    """`app:app` of `directory` under a real uvicorn server on the loopback; `setup` runs first."""
    port = free_port()
    code = f"{setup}\nimport uvicorn\nuvicorn.run('app:app', host='127.0.0.1', port={port})"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=directory, env=env, stdout=out, stderr=out
        )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def up() -> bool | None:
        assert process.poll() is None, f"the application exited:\n{log.read_text()}"
        with contextlib.suppress(httpx.TransportError):
            return http.get("/docs").status_code == 200 or None
        return None

    try:
        wait_for(up, what="the application under uvicorn")
        yield http
    finally:
        http.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
