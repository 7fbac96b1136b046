"""Run the examples of the README and of docs/ as a reader would (tests/test_docs_examples.py).

The convention the pages follow is written for their authors in docs/contributing.md
("Examples run"). In short: every `python`, `sh`/`bash` and `console` block runs, in
page order, with the page's blocks sharing one Python namespace, one working directory
and one environment; an HTML comment on the line before a block changes that:

    <!-- not-run: REASON -->   the block is not run; the reason is required
    <!-- background -->        a shell block started as if in another terminal (a daemon),
                               stopped with Ctrl-C (SIGINT) when the page ends
    <!-- file: PATH -->         the block (any language) is written to PATH in the working
                               directory instead of being run: a module of your own, a settings file

Sybil parses the pages (its Markdown lexers find the blocks and their line numbers);
this module decides what each block means and runs it.
"""

from __future__ import annotations

import contextlib
import doctest
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sybil import Document, Region
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

from errands.harness.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
SHELLS = frozenset({"sh", "bash", "shell"})
RUNNABLE = SHELLS | {"python", "console"}
DIRECTIVES = frozenset({"not-run", "background", "file"})
# The API's address as the pages write it (errands' default port) and as the runner serves it.
DEFAULT_ADDRESS = "localhost:3000"
_COMMENT = re.compile(r"<!--\s*(?P<name>[A-Za-z][\w-]*)\s*(?::\s*(?P<argument>.*?))?\s*-->")
_PROMPT = "$ "
BLOCK_SECONDS = 120.0
# Shown output matches with `...` standing for anything, and runs of spaces alike.
_OUTPUT_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


class PageError(Exception):
    """A page breaks the convention (an unknown directive, a not-run without its reason)."""


@dataclass(frozen=True)
class Block:
    """One fenced block of a page, with the directive written on the line before it."""

    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    source: str
    directive: str | None = None
    argument: str = ""

    @property
    def where(self) -> str:
        return f"{_shown(self.path)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.directive != "not-run" and (
            self.directive == "file" or self.language in RUNNABLE
        )


def documents() -> list[Path]:
    """The README and every page of the site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The page's fenced blocks that have a language, in order, each with its directive."""
    found: list[Block] = []

    def parse(document: Document) -> Iterable[Region]:
        for region in FencedCodeBlockLexer(language=r"[\w+-]+")(document):
            line = document.text.count("\n", 0, region.start) + 1
            before = document.text[: region.start].rstrip().rsplit("\n", 1)[-1].strip()
            found.append(_block(path, line, region.lexemes, before))
        return ()

    Document.parse(str(path), parse)
    return found


def _block(path: Path, line: int, lexemes: dict[str, Any], before: str) -> Block:
    language, source = lexemes["language"], textwrap.dedent(str(lexemes["source"]))
    match = _COMMENT.fullmatch(before)
    if match is not None and match["name"] not in DIRECTIVES and match["argument"] is not None:
        # A comment that looks like a directive but is none: a typo must not hide a block.
        raise PageError(f"{_shown(path)}:{line}: unknown directive {match[0]!r}")
    if match is None or match["name"] not in DIRECTIVES:
        return Block(path, line, language, source)
    name, argument = match["name"], (match["argument"] or "").strip()
    if name in {"not-run", "file"} and not argument:
        what = "a reason" if name == "not-run" else "a path"
        raise PageError(f"{_shown(path)}:{line}: <!-- {name}: ... --> needs {what}")
    if name == "background" and language not in SHELLS:
        raise PageError(f"{_shown(path)}:{line}: only a shell block runs in background")
    return Block(path, line, language, source, name, argument)


@dataclass
class Page:
    """A page being run: its namespace, working directory, environment and daemons."""

    path: Path
    workdir: Path
    env: dict[str, str]
    port: int
    database_url: str
    namespace: dict[str, Any] = field(default_factory=dict)
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self) -> None:
        try:
            for block in blocks(self.path):
                if block.runs:
                    self.run_block(block)
        finally:
            self.stop_background()

    def run_block(self, block: Block) -> None:
        source = block.source.replace(DEFAULT_ADDRESS, f"localhost:{self.port}")
        if block.directive == "file":
            target = self.workdir / block.argument
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source)
        elif block.directive == "background":
            self.start_background(block, source)
        elif block.language == "python" and source.startswith(">>>"):
            self.doctest(block, source)
        elif block.language == "python":
            code = compile("\n" * block.line + source, str(block.path), "exec")
            exec(code, self.namespace)
        elif block.language == "console":
            for command, expected in console_commands(source):
                self.check_output(block, command, expected)
        else:
            self.shell(block, source)

    def doctest(self, block: Block, source: str) -> None:
        """An interactive session (`>>>`): each statement runs, each shown result is checked."""
        test = doctest.DocTestParser().get_doctest(
            source, self.namespace, block.where, str(block.path), block.line
        )
        runner = doctest.DocTestRunner(optionflags=_OUTPUT_FLAGS)
        report: list[str] = []
        runner.run(test, out=report.append, clear_globs=False)
        self.namespace.update(test.globs)  # the test ran on a copy of the namespace
        if runner.failures:
            raise AssertionError(f"{block.where}: the session differs\n" + "".join(report))

    def shell(self, block: Block, source: str) -> str:
        try:
            done = subprocess.run(
                ["bash", "-c", "set -euo pipefail\n" + source],
                cwd=self.workdir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=BLOCK_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{block.where}: still running after {exc.timeout:g}s") from None
        if done.returncode != 0:
            raise AssertionError(
                f"{block.where}: exit code {done.returncode}\n{source}\n"
                f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
            )
        return done.stdout

    def check_output(self, block: Block, command: str, expected: str) -> None:
        got = self.shell(block, command)
        if not doctest.OutputChecker().check_output(expected, got, _OUTPUT_FLAGS):
            raise AssertionError(
                f"{block.where}: `{command}` printed\n{got}\nwhere the page shows\n{expected}"
            )

    def start_background(self, block: Block, source: str) -> None:
        log = (self.workdir / ".logs").joinpath(f"line-{block.line}.log")
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-c", source],
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal would give it
            )
        self.background.append(process)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"{block.where}: exited {process.returncode}\n{log.read_text()}"
                )
            return _answers(f"http://127.0.0.1:{self.port}/ready") or _worker_runs(
                self.database_url, process.pid
            )

        try:
            wait_for(ready, timeout=60, what=f"{block.where} to be ready", interval=0.1)
        except TimeoutError:
            raise AssertionError(f"{block.where}: not ready in 60s\n{log.read_text()}") from None

    def stop_background(self) -> None:
        """Ctrl-C, as in the terminal each was started in; then make sure nothing is left."""
        for process in self.background:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        for process in self.background:
            try:
                process.wait(timeout=30)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # whatever outlived the grace
        self.background.clear()


def console_commands(source: str) -> Iterator[tuple[str, str]]:
    """`$ command` lines (continued by a trailing backslash) and the output shown under each."""
    entries: list[tuple[list[str], list[str]]] = []
    for line in source.splitlines():
        if line.startswith(_PROMPT):
            entries.append(([line.removeprefix(_PROMPT)], []))
        elif not entries:
            raise PageError(f"a console block begins with {line!r}, not with {_PROMPT!r}")
        elif not entries[-1][1] and entries[-1][0][-1].endswith("\\"):
            entries[-1][0].append(line)
        else:
            entries[-1][1].append(line)
    for command, output in entries:
        yield "\n".join(command), "".join(f"{line}\n" for line in output)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _worker_runs(database_url: str, group: int) -> bool:
    """A worker of this process group has announced itself (a daemon without HTTP)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        pids = [pid for (pid,) in conn.execute("select pid from errands_workers").fetchall()]
    return any(_group_of(pid) == group for pid in pids)


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def environment(database_url: str, port: int, workdir: Path) -> dict[str, str]:
    """What a reader's shell would hold: errands on PATH, the database and the API's address."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ERRANDS_", "PYTEST_")) and key not in {"DATABASE_URL", "PYTHONPATH"}
    }
    return {
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "ERRANDS_DATABASE_URL": database_url,
        "ERRANDS_HTTP_ADDR": f"127.0.0.1:{port}",
        "ERRANDS_DATA_DIR": str(workdir / ".errands-data"),
        "ERRANDS_WORKERS": "1",
        "ERRANDS_GRACE_SECONDS": "5",
        "ERRANDS_LOG_FORMAT": "json",
    }
