"""`manage.py errands_worker`: `errands run` with Django set up, for Django's tasks.

Every option of `errands run` is accepted (`--help` lists them) and checked by
it. What this command adds: the database is the one Django reaches for the
backend's DATABASE alias (unless --database-url is given), the task module
that runs Django tasks is loaded beside ERRANDS_TASKS / --tasks, and the
workers take the backend's QUEUES (and `default`) unless --queues is given.

The workers are forked from this process, so Django is set up in each of them
already; its database connections (and connection pools) are closed before the
first fork, so that no child shares a connection its parent opened.
"""

from __future__ import annotations

import argparse
from typing import Any

import click
from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from errands.cli import main as errands_main
from errands.cli import run as run_command
from errands.config import Settings
from errands.contrib.django import runner
from errands.contrib.django.management import backend_argument, errands_backend


class Command(BaseCommand):
    help = "Run the errands daemon (`errands run`) with Django set up, for Django's tasks."

    def add_arguments(self, parser: CommandParser) -> None:
        backend_argument(parser, "whose database and queues to work")
        for option in _run_options():
            parser.add_argument(*option.opts, **_argparse_spec(option))

    def handle(self, *args: Any, **options: Any) -> None:
        backend = errands_backend(options["backend"])
        given = {o.name: options[o.name] for o in _run_options() if o.name in options}
        if "database_url" not in given:
            given["database_url"] = backend.database_url()
        env_tasks = ",".join(Settings.from_env().tasks)
        given["tasks"] = ",".join(filter(None, [runner.__name__, given.get("tasks", env_tasks)]))
        if "queues" not in given and backend.queues:
            given["queues"] = ",".join(sorted(backend.queues | {"default"}))
        _close_connections()
        errands_main(["run", *_command_line(given)])


def _close_connections() -> None:
    """Close Django's connections and pools: the workers fork from here and must not share one.

    Nothing in this process opens one again: the supervisor runs no Django code.
    """
    for wrapper in connections.all():
        wrapper.close()
        if close_pool := getattr(wrapper, "close_pool", None):  # PostgreSQL, OPTIONS["pool"]
            close_pool()


def _run_options() -> list[click.Option]:
    return [p for p in run_command.params if isinstance(p, click.Option) and p.name]


# Where this command's defaults differ from `errands run`'s.
_HELP = {
    "database_url": "PostgreSQL URL [default: Django's database for the backend's DATABASE]",
    "queues": "Comma-separated queues to work [default: the backend's QUEUES and 'default']",
    "tasks": "Comma-separated modules that register errands tasks, beside Django's "
    "[env: ERRANDS_TASKS]",
}


def _argparse_spec(option: click.Option) -> dict[str, Any]:
    """The option as argparse takes it; `errands run` itself checks and converts the value."""
    assert option.name is not None
    spec: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS}
    help_text = _HELP.get(option.name, option.help or "")
    if option.show_default and option.default is not None:
        help_text += f" [default: {option.default}]"
    spec["help"] = help_text.replace("%", "%%")
    if option.is_flag:
        spec["action"] = "store_true"
    elif isinstance(option.type, click.Choice):
        spec["choices"] = list(option.type.choices)
    elif isinstance(option.type, click.IntRange):
        spec["metavar"] = "N"
    elif isinstance(option.type, click.FloatRange):
        spec["metavar"] = "SECONDS"
    else:
        spec["metavar"] = option.metavar or option.name.upper()
    return spec


def _command_line(given: dict[str, Any]) -> list[str]:
    line: list[str] = []
    for option in _run_options():
        if option.name not in given:
            continue
        flag = option.opts[0]
        value = given[option.name]
        if option.is_flag:
            line += [flag] if value else []
        else:
            line += [flag, str(value)]
    return line
