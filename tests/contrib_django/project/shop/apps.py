"""The shop app: it records Django's task signals where SHOP_SIGNAL_LOG says."""

from __future__ import annotations

import json
import os
from typing import Any

from django.apps import AppConfig
from django.db import connections
from django_tasks.signals import task_enqueued, task_finished, task_started


class ShopConfig(AppConfig):
    name = "tests.contrib_django.project.shop"

    def ready(self) -> None:
        if query := os.environ.get("SHOP_STARTUP_QUERY"):
            # As apps that read their configuration from the database at start-up do,
            # on a plain connection and on one from a pool.
            for alias in ("default", "pooled"):
                with connections[alias].cursor() as cursor:
                    cursor.execute(query, [alias, os.getpid()])
        for signal in (task_enqueued, task_started, task_finished):
            signal.connect(_record, dispatch_uid=f"shop-{id(signal)}")


def _record(signal: Any, sender: type, task_result: Any, **kwargs: Any) -> None:
    path = os.environ.get("SHOP_SIGNAL_LOG")
    if not path:
        return
    names = {
        id(task_enqueued): "enqueued",
        id(task_started): "started",
        id(task_finished): "finished",
    }
    line = {
        "signal": names[id(signal)],
        "pid": os.getpid(),
        "sender": sender.__name__,
        "id": task_result.id,
        "status": str(task_result.status),
        "errors": [e.exception_class_path for e in task_result.errors],
        "attempts": task_result.attempts,
    }
    with open(path, "a") as log:
        log.write(json.dumps(line) + "\n")
