"""Every example of the README and of docs/ runs (the convention: docs/contributing.md).

Each page is one test: its blocks run in order against a database of its own, in a
working directory of its own, with the API's address on a free port. Checking the
convention itself (directives, reasons) needs no database and is not slow.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

from errands import Client, registry
from errands import client as client_module
from errands.harness.process import free_port
from tests.examples import ROOT, Block, Page, blocks, console_commands, documents, environment

PAGES = documents()
# errands.periodic is the decorator; the module that holds the schedules is this one.
PERIODIC = importlib.import_module("errands.periodic")


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.slow
@pytest.mark.parametrize("path", PAGES, ids=_name)
def test_the_examples_of_the_page_run(
    path: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not any(block.runs for block in blocks(path)):
        return  # nothing to run: no database needed
    db_url: str = request.getfixturevalue("db_url")
    port = free_port()
    # The README's commands run in the checkout, as its reader runs them; a page's in a
    # directory of its own, which its `file:` blocks fill.
    workdir = ROOT if path.name == "README.md" else tmp_path
    env = environment(db_url, port, tmp_path)
    _become(env, workdir, monkeypatch)
    page = Page(path, workdir, env, port, db_url, namespace={"__name__": "__main__"})
    try:
        page.run()
    finally:
        _close_clients(page.namespace)
        _forget_modules_of(workdir)


def _become(env: dict[str, str], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as the page's reader: its environment, its directory, no task of others."""
    for key in set(os.environ) - set(env):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    # A reader's process has registered nothing yet (whatever other tests imported), and what
    # a page registers or opens stays with it: tasks, schedules, the default client.
    monkeypatch.setattr(registry, "_tasks", {})
    monkeypatch.setattr(PERIODIC, "_schedules", {})
    monkeypatch.setattr(client_module._Process, "default", None)


def _close_clients(namespace: dict[str, object]) -> None:
    """Close what the page opened, before its database goes: its clients, the default one."""
    opened = [value for value in namespace.values() if isinstance(value, Client)]
    for client in [*opened, client_module._Process.default]:
        if client is not None:
            client.close()


def _forget_modules_of(workdir: Path) -> None:
    """Unimport the modules a page wrote, so the next page's `tasks.py` is its own."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(workdir) and workdir != ROOT:
            del sys.modules[name]


# -- the convention ------------------------------------------------------------------------


def test_every_page_follows_the_convention() -> None:
    """Directives are known, each not-run block says why (blocks() raises otherwise)."""
    found = [block for path in PAGES for block in blocks(path)]
    assert any(block.runs for block in found)
    not_run = [block for block in found if block.directive == "not-run"]
    assert all(len(block.argument) >= 10 for block in not_run), [
        block.where for block in not_run if len(block.argument) < 10
    ]


def test_the_readme_writes_no_file_into_the_checkout() -> None:
    assert not [block.where for block in blocks(ROOT / "README.md") if block.directive == "file"]


def test_a_console_block_pairs_each_command_with_its_output() -> None:
    source = "$ errands stats \\\n    --json\n{...}\n$ errands --version\nerrands, version ...\n"
    assert list(console_commands(source)) == [
        ("errands stats \\\n    --json", "{...}\n"),
        ("errands --version", "errands, version ...\n"),
    ]


def test_a_block_marked_not_run_without_a_reason_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- not-run -->\n```sh\nerrands run\n```\n")
    with pytest.raises(Exception, match="needs a reason"):
        blocks(page)


def test_a_misspelt_directive_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- not_run: it would hang -->\n```sh\nerrands run\n```\n")
    with pytest.raises(Exception, match="unknown directive"):
        blocks(page)


def test_blocks_carry_their_directive_and_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# t\n\n<!-- file: tasks.py -->\n```python\nx = 1\n```\n\n```text\nno\n```\n")
    [file, text] = blocks(page)
    assert (file.directive, file.argument, file.line, file.source) == (
        "file",
        "tasks.py",
        4,
        "x = 1\n",
    )
    assert isinstance(text, Block) and not text.runs
