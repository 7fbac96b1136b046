"""The management commands' shared part: which ErrandsBackend a command works for."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError, CommandParser

from errands.contrib.django.backend import ErrandsBackend, backend_named


def backend_argument(parser: CommandParser, what: str) -> None:
    parser.add_argument(
        "--backend",
        default="default",
        help=f"The TASKS alias of the ErrandsBackend {what} [default: default]",
    )


def errands_backend(alias: str) -> ErrandsBackend:
    try:
        return backend_named(alias)
    except ImproperlyConfigured as exc:
        raise CommandError(str(exc)) from exc
