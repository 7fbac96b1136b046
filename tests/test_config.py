"""Settings come from the environment and bad values are named at start-up."""

from __future__ import annotations

import socket

import pytest

from errands.config import Settings
from errands.errors import ConfigurationError


def test_defaults_follow_the_design() -> None:
    settings = Settings.from_env({})
    assert settings.lease_seconds == 30
    assert settings.http_addr == "0.0.0.0:3000"
    assert settings.database_url is None


def test_database_url_falls_back_to_database_url() -> None:
    assert Settings.from_env({"DATABASE_URL": "postgresql://x"}).database_url == "postgresql://x"
    both = {"DATABASE_URL": "postgresql://x", "ERRANDS_DATABASE_URL": "postgresql://y"}
    assert Settings.from_env(both).database_url == "postgresql://y"


def test_the_host_name_in_worker_ids_defaults_to_the_machines_and_can_be_set() -> None:
    assert Settings.from_env({}).hostname == socket.gethostname()
    assert Settings.from_env({"ERRANDS_HOSTNAME": "web-2.eu"}).hostname == "web-2.eu"


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("true", True), ("0", False), ("", False)])
def test_pgbouncer_is_a_yes_or_no(raw: str, value: bool) -> None:
    assert Settings.from_env({"ERRANDS_PGBOUNCER": raw}).pgbouncer is value


def test_lists_are_comma_separated() -> None:
    settings = Settings.from_env(
        {"ERRANDS_TASKS": "app.tasks, app.more ,", "ERRANDS_API_TOKENS": "a,b"}
    )
    assert settings.tasks == ("app.tasks", "app.more")
    assert settings.api_tokens == ("a", "b")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ERRANDS_WORKERS", "0"),
        ("ERRANDS_WORKERS", "two"),
        ("ERRANDS_LEASE_SECONDS", "-1"),
        ("ERRANDS_LEASE_SECONDS", "nan"),
        ("ERRANDS_HTTP_ADDR", "localhost"),
        ("ERRANDS_LOG_FORMAT", "xml"),
        ("ERRANDS_LOG_LEVEL", "loud"),
        ("ERRANDS_PGBOUNCER", "maybe"),
        ("ERRANDS_HOSTNAME", "host:1"),
        ("ERRANDS_HOSTNAME", "a b"),
    ],
)
def test_an_invalid_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})


def test_tokens_never_show_in_the_settings_repr() -> None:
    assert "s3cret" not in repr(Settings.from_env({"ERRANDS_API_TOKENS": "s3cret"}))
