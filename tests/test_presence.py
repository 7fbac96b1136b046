"""Telling a dead worker process from a live one, without mistaking a reused pid."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Any

import psycopg

from errands.queue.presence import ProcessIdentity, announce, gone_workers

Conn = psycopg.Connection[Any]


def identity_of(pid: int) -> ProcessIdentity:
    identity = ProcessIdentity.of(pid)
    assert identity is not None
    return identity


def exited_process() -> ProcessIdentity:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    identity = identity_of(child.pid)
    child.communicate(b"")
    return identity


def test_a_live_process_is_not_gone() -> None:
    assert not identity_of(os.getpid()).is_gone()


def test_an_exited_process_is_gone() -> None:
    assert exited_process().is_gone()


def test_a_pid_now_used_by_a_later_process_is_gone() -> None:
    earlier = dataclasses.replace(
        identity_of(os.getpid()), started=identity_of(os.getpid()).started - 1
    )
    assert earlier.is_gone()


def test_a_process_of_another_boot_or_namespace_is_never_called_gone() -> None:
    exited = exited_process()
    assert not dataclasses.replace(exited, boot_id="another boot").is_gone()
    assert not dataclasses.replace(exited, pid_namespace="pid:[1]").is_gone()


def test_gone_workers_lists_only_the_workers_whose_process_is_gone(conn: Conn) -> None:
    announce(conn, "here:1:alive", ["default"], concurrency=1)
    announce(conn, "here:2:dead", ["default"], concurrency=1)
    announce(conn, "there:3:elsewhere", ["default"], concurrency=1)
    dead = exited_process()
    conn.execute(
        "update errands_workers set pid = %s, process_started = %s where id = 'here:2:dead'",
        (dead.pid, dead.started),
    )
    conn.execute(
        "update errands_workers set pid = %s, process_started = %s, boot_id = 'another boot'"
        " where id = 'there:3:elsewhere'",
        (dead.pid, dead.started),
    )
    assert gone_workers(conn, "here") == ["here:2:dead"]
    assert gone_workers(conn, "there") == []  # here's dead worker is not there's to release
