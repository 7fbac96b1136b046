"""One stack for the whole session, brought up from deploy/compose.local.yml and taken down
(volumes too) at the end; the figures each scenario measured, printed after the results.

Run by `make compose-test` (deploy/compose-test), which provides the engine and the images;
never collected by `make test` (this directory lies outside the test paths).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from stack import PORTS, Stack, environment, since

FIGURES: list[str] = []
LOGS: list[str] = []  # the services' last lines, when something failed


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    stack = Stack(environment())
    ports = ", ".join(f"{what} {stack.env[name]}" for name, what in PORTS.items())
    FIGURES.append(f"project {stack.env['COMPOSE_PROJECT_NAME']} on 127.0.0.1: {ports}")
    stack.compose("down", "--volumes", "--remove-orphans")  # what a failed run left
    started = time.monotonic()
    stack.compose("up", "--detach")
    try:
        stack.wait_healthy("api")
        stack.wait_healthy("worker")
        FIGURES.append(f"up: api and worker healthy {since(started):.1f} s after `up`")
        yield stack
        if request.session.testsfailed:
            LOGS.append(stack.logs())
    except BaseException:
        LOGS.append(stack.logs())
        raise
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", timeout=120)


@pytest.fixture
def figure() -> Iterator[list[str]]:
    """Lines a scenario measured, for the summary."""
    lines: list[str] = []
    yield lines
    FIGURES.extend(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for logs in LOGS:
        terminalreporter.section("the services' logs")
        terminalreporter.write(logs)
    if FIGURES:
        terminalreporter.section("figures (a machine shared with other work: not benchmarks)")
        for line in FIGURES:
            terminalreporter.write_line(line)
