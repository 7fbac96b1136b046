"""The OpenAPI 3.1 document of the HTTP API, served at /openapi.json.

Fields and query parameters are generated from the tables of rules that the
validation runs (JOB_FIELDS, LIST_FILTERS, JOB_QUERY), so the document and the behaviour
cannot drift apart; the schemathesis test checks the rest.
"""

from __future__ import annotations

from typing import Any

from errands.api.endpoints import JOB_QUERY, LIST_FILTERS, MAX_BATCH
from errands.api.http import MAX_BODY_BYTES
from errands.api.transport import DEFAULT_LIMITS as _LIMITS
from errands.queue import JobState
from errands.queue.requests import JOB_FIELDS, JSON_VALUE_SCHEMA, QUEUE_NAME, Field


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _json(
    schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        answer["headers"] = headers
    return answer


_REASONS = {
    400: "Unparsable JSON, a repeated header, or a header or query string that is not UTF-8",
    401: "Missing or unknown bearer token (when ERRANDS_API_TOKENS is set)",
    404: "No such job",
    408: f"The request line and headers took over {_LIMITS.head_timeout:g} s, "
    f"or the body over {_LIMITS.body_timeout:g} s",
    409: "Idempotency key taken by another request (a stored job's, another job's of the "
    "same batch, or the body's and the header's differ), or a state that forbids the action",
    413: f"The body exceeds {MAX_BODY_BYTES} bytes",
    415: "The body is not application/json in UTF-8, or has a Content-Encoding",
    422: "Invalid fields or query parameters, each named in details",
    429: "Too many refused tokens from this address within a minute; "
    "try again after Retry-After seconds",
    431: f"The request line and headers exceed {_LIMITS.max_head_bytes} bytes "
    f"or {_LIMITS.max_headers} lines",
    501: "A transfer coding other than chunked",
    503: "The database is unavailable, or the server has too many connections or requests",
}


def _errors(*statuses: int) -> dict[str, Any]:
    # Every operation may meet the transport's limits (408, 431, 503 beyond the connections),
    # framing errors (400, 501) and unknown query parameters (422); one that wants a token,
    # the throttling of guesses (429).
    every = {400, 408, 422, 431, 501, 503, *statuses, *({429} if 401 in statuses else set())}
    return {str(status): _json(_ref("Error"), _REASONS[status]) for status in sorted(every)}


def _properties(fields: dict[str, Field]) -> dict[str, Any]:
    return {name: rule.schema() for name, rule in fields.items()}


def _query(fields: dict[str, Field]) -> list[dict[str, Any]]:
    """Query parameters: never null, and never blank unless the rule allows it."""
    return [
        {
            "name": name,
            "in": "query",
            "required": rule.required,
            "schema": {
                key: value
                for key, value in {**rule.rule.schema(), "default": rule.default}.items()
                if value is not None
            },
            **({"description": rule.description} if rule.description else {}),
        }
        for name, rule in fields.items()
    ]


_TIMESTAMP = {"type": "string", "format": "date-time"}
_JOB_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}


def document() -> dict[str, Any]:
    job_request = {
        "type": "object",
        "required": ["task"],
        "additionalProperties": False,
        "properties": _properties(JOB_FIELDS),
        # Both given (null is absent): refused.
        "not": {
            "required": ["run_at", "delay"],
            "properties": {"run_at": {"type": "string"}, "delay": {"type": "number"}},
        },
    }
    job = {
        "type": "object",
        "required": list(_JOB_PROPERTIES),
        "properties": _JOB_PROPERTIES,
    }
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["field", "message"],
                            "properties": {
                                "field": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
            }
        },
    }
    job_answer = _json(_ref("Job"), "The job")
    idempotency_header = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": JOB_FIELDS["idempotency_key"].rule.schema(),
        "description": "Same as the idempotency_key field, in UTF-8 (not taken by /jobs/batch)",
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "errands",
            "version": "1",
            "description": "Submit and inspect background jobs. Errors use one shape: "
            '{"error": {"code", "message", "details"}}.',
        },
        "components": {
            "schemas": {
                "JobRequest": job_request,
                "Job": job,
                "Error": error,
                "JsonValue": JSON_VALUE_SCHEMA,
                "Schedule": {
                    "type": "object",
                    "required": list(_SCHEDULE_PROPERTIES),
                    "properties": _SCHEDULE_PROPERTIES,
                },
                "Queue": _QUEUE,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/jobs": {
                "post": {
                    "summary": "Submit one job",
                    "parameters": [idempotency_header],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("JobRequest")}},
                    },
                    "responses": {
                        "201": _json(
                            _ref("Job"), "Created", {"Location": {"schema": {"type": "string"}}}
                        ),
                        "200": _json(
                            _ref("Job"),
                            "An idempotent replay: the job stored under this key",
                            {
                                "Idempotent-Replayed": {
                                    "schema": {"type": "string", "enum": ["true"]}
                                }
                            },
                        ),
                        **_errors(400, 401, 409, 413, 415, 422, 503),
                    },
                },
                "get": {
                    "summary": "List jobs, newest first",
                    "parameters": _query(LIST_FILTERS),
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["jobs", "next_after"],
                                "properties": {
                                    "jobs": {"type": "array", "items": _ref("Job")},
                                    "next_after": _nullable({"type": "integer"}),
                                },
                            },
                            "A page of jobs; next_after is null on the last page",
                        ),
                        **_errors(401, 422, 503),
                    },
                },
            },
            "/jobs/batch": {
                "post": {
                    "summary": f"Submit up to {MAX_BATCH} jobs in one transaction: all or none",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["jobs"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "jobs": {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": MAX_BATCH,
                                            "items": _ref("JobRequest"),
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "required": ["jobs"],
                                "properties": {"jobs": {"type": "array", "items": _ref("Job")}},
                            },
                            "The jobs, in the order submitted (replays included)",
                        ),
                        **_errors(400, 401, 409, 413, 415, 422, 503),
                    },
                }
            },
            "/jobs/{id}": {
                "get": {
                    "summary": "One job; with `wait`, once it has finished (a long poll)",
                    "parameters": [_JOB_ID, *_query(JOB_QUERY)],
                    "responses": {"200": job_answer, **_errors(401, 404, 422, 503)},
                }
            },
            "/jobs/{id}/retry": {
                "post": {
                    "summary": "Run a dead or cancelled job again, with a fresh attempt budget",
                    "parameters": [_JOB_ID],
                    "responses": {"200": job_answer, **_errors(401, 404, 409, 413, 503)},
                }
            },
            "/jobs/{id}/cancel": {
                "post": {
                    "summary": "Cancel a pending or failed job",
                    "parameters": [_JOB_ID],
                    "responses": {"200": job_answer, **_errors(401, 404, 409, 413, 503)},
                }
            },
            "/queues": {
                "get": {
                    "summary": "Every queue that holds jobs or was ever paused",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["queues"],
                                "properties": {"queues": {"type": "array", "items": _ref("Queue")}},
                            },
                            "Queues by name",
                        ),
                        **_errors(401, 503),
                    },
                }
            },
            "/queues/{name}/pause": _queue_action(
                "Pause a queue: its jobs stay pending, unclaimed, until it is resumed"
            ),
            "/queues/{name}/resume": _queue_action("Resume a paused queue"),
            "/stats": {
                "get": {
                    "summary": "Jobs per queue and state, and live workers",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["queues", "workers", "paused_queues"],
                                "properties": {
                                    "paused_queues": {"type": "array", "items": {"type": "string"}},
                                    "queues": {
                                        "type": "object",
                                        "additionalProperties": {
                                            "type": "object",
                                            "properties": {
                                                s.value: {"type": "integer"} for s in JobState
                                            },
                                        },
                                    },
                                    "workers": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                            "Counts and workers",
                        ),
                        **_errors(401, 503),
                    },
                }
            },
            "/schedules": {
                "get": {
                    "summary": "Periodic schedules: definition, next tick, last enqueued job",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["schedules"],
                                "properties": {
                                    "schedules": {"type": "array", "items": _ref("Schedule")}
                                },
                            },
                            "Every schedule a scheduler declared, by name",
                        ),
                        **_errors(401, 422, 503),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness; no database call",
                    "security": [],
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"status": {"const": "ok"}}}, "Alive"
                        ),
                        **_errors(),
                    },
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness: the database answers; under errands run, a worker runs",
                    "security": [],
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"status": {"const": "ready"}}},
                            "Ready",
                        ),
                        **_errors(503),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(503),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": _json({"type": "object"}, "The OpenAPI document"),
                        **_errors(401),
                    },
                }
            },
        },
    }


_SCHEDULE_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"},
    "task": {"type": "string"},
    "cron": _nullable({"type": "string", "description": "five fields or a nickname (@daily)"}),
    "every": _nullable({"type": "integer", "minimum": 1, "description": "seconds"}),
    "tz": {"type": "string", "description": "the time zone cron is evaluated in"},
    "payload": {"type": "object"},
    "catch_up": {"type": "boolean"},
    "next_tick": _nullable(_TIMESTAMP),
    "last_tick": _nullable(_TIMESTAMP),
    "last_job_id": _nullable({"type": "integer"}),
    "last_job_state": _nullable({"type": "string", "enum": [s.value for s in JobState]}),
    "last_enqueued_at": _nullable(_TIMESTAMP),
    "declared_at": _TIMESTAMP,
    "seen_at": _TIMESTAMP,
    "active": {
        "type": "boolean",
        "description": "a running scheduler declared it within the last three minutes",
    },
}


def _queue_action(summary: str) -> dict[str, Any]:
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": QUEUE_NAME.pattern},
    }
    return {
        "post": {
            "summary": summary,
            "parameters": [name],
            "responses": {
                "200": _json(_ref("Queue"), "The queue, as it is now"),
                **_errors(401, 413, 422, 503),
            },
        }
    }


_QUEUE: dict[str, Any] = {
    "type": "object",
    "required": ["name", "paused", "counts"],
    "properties": {
        "name": {"type": "string"},
        "paused": {"type": "boolean"},
        "counts": {
            "type": "object",
            "required": [s.value for s in JobState],
            "properties": {s.value: {"type": "integer"} for s in JobState},
        },
    },
}

_JOB_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "queue": {"type": "string"},
    "task": {"type": "string"},
    "payload": {"type": "object"},
    "state": {"type": "string", "enum": [s.value for s in JobState]},
    "priority": {"type": "integer"},
    "run_at": _TIMESTAMP,
    "attempts": {"type": "integer", "minimum": 0},
    "max_attempts": {"type": "integer", "minimum": 1},
    "idempotency_key": _nullable({"type": "string"}),
    "lease_owner": _nullable({"type": "string"}),
    "lease_expires_at": _nullable(_TIMESTAMP),
    "last_error": _nullable({"type": "string"}),
    "errors": {"type": "array", "items": {"type": "object"}},
    "result": {"description": "the task's return value (any JSON)"},
    "created_at": _TIMESTAMP,
    "started_at": _nullable(_TIMESTAMP),
    "finished_at": _nullable(_TIMESTAMP),
    "updated_at": _TIMESTAMP,
}
