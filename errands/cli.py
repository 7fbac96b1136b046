"""The `errands` command: readable output for people, `--json` for machines."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psycopg

from errands.config import Settings
from errands.database import connect, resolve_url
from errands.errors import ErrandsError
from errands.log import configure_logging
from errands.queue import prune as prune_jobs
from errands.schema import migrate as apply_migrations

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass
class Context:
    settings: Settings

    def database_url(self) -> str:
        return resolve_url(self.settings)


pass_context = click.make_pass_decorator(Context)


@click.group()
@click.option(
    "--database-url",
    metavar="URL",
    help="PostgreSQL URL [env: ERRANDS_DATABASE_URL, DATABASE_URL; default: embedded database]",
)
@click.pass_context
def cli(ctx: click.Context, database_url: str | None) -> None:
    """errands: background jobs on PostgreSQL."""
    settings = Settings.from_env()
    if database_url:
        settings = dataclasses.replace(settings, database_url=database_url)
    configure_logging(settings.log_format, settings.log_level)
    ctx.obj = Context(settings)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(func)


def emit(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data, default=str, indent=2) if as_json else text)


@cli.command()
@json_option
@pass_context
def migrate(ctx: Context, as_json: bool) -> None:
    """Create or update the errands tables (safe to run any number of times)."""
    with psycopg.connect(ctx.database_url(), autocommit=True) as conn:
        applied = apply_migrations(conn)
    names = [f"{m.version:04d}_{m.name}" for m in applied]
    emit(as_json, {"applied": names}, "\n".join(f"applied {n}" for n in names) or "up to date")


@cli.command()
@click.option(
    "--older-than",
    type=float,
    default=7 * 24,
    show_default=True,
    help="Retention in hours: finished jobs older than this are deleted.",
)
@json_option
@pass_context
def prune(ctx: Context, older_than: float, as_json: bool) -> None:
    """Delete finished jobs past their retention, in bounded batches."""
    with connect(ctx.database_url()) as conn:
        deleted = prune_jobs(conn, retention_seconds=older_than * 3600)
    emit(as_json, {"deleted": deleted}, f"deleted {deleted} finished jobs")


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ErrandsError as exc:
        click.echo(f"errands: {exc}", err=True)
        sys.exit(2)
