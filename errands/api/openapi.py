"""The OpenAPI 3.1 document of the HTTP API, served at /openapi.json.

Constraints come from the validation code itself (requests.py), so the document
and the behaviour cannot drift apart; the schemathesis test checks the rest.
"""

from __future__ import annotations

from typing import Any

from errands.queue import JobState
from errands.queue.admin import MAX_LIST_LIMIT
from errands.queue.requests import (
    INT32,
    MAX_ATTEMPTS_LIMIT,
    MAX_DELAY_SECONDS,
    MAX_IDEMPOTENCY_KEY,
    QUEUE_NAME,
    TASK_NAME,
)

MAX_BATCH = 1000


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


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "The body is not valid JSON",
        401: "Missing or unknown bearer token (when ERRANDS_API_TOKENS is set)",
        404: "No such job",
        405: "Method not allowed",
        409: "Idempotency key taken by another request, or a state that forbids the action",
        413: "The body exceeds 1 MiB",
        415: "The body is not application/json",
        422: "Invalid fields, each named in details",
        503: "The database is unavailable",
    }
    return {str(status): _json(_ref("Error"), reasons[status]) for status in statuses}


_TIMESTAMP = {"type": "string", "format": "date-time"}
_JOB_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
_REQUEST_FIELDS: dict[str, Any] = {
    "task": {"type": "string", "pattern": TASK_NAME.pattern},
    "payload": {
        "type": "object",
        "description": "the task's keyword arguments (JSON without NUL characters)",
    },
    "queue": {"type": "string", "pattern": QUEUE_NAME.pattern, "default": "default"},
    "priority": {"type": "integer", "minimum": INT32[0], "maximum": INT32[1], "default": 0},
    "run_at": {**_TIMESTAMP, "description": "not before this time (RFC 3339 with an offset)"},
    "delay": {
        "type": "number",
        "minimum": 0,
        "maximum": MAX_DELAY_SECONDS,
        "description": "seconds",
    },
    "max_attempts": {"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS_LIMIT, "default": 5},
    "idempotency_key": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
}


def document() -> dict[str, Any]:
    job_request = {
        "type": "object",
        "required": ["task"],
        "additionalProperties": False,
        "properties": _REQUEST_FIELDS,
        "not": {"required": ["run_at", "delay"]},
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
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
        "description": "Same as the idempotency_key field",
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
            "schemas": {"JobRequest": job_request, "Job": job, "Error": error},
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
                    "parameters": [
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {"type": "string", "enum": [s.value for s in JobState]},
                        },
                        {"name": "queue", "in": "query", "schema": {"type": "string"}},
                        {"name": "task", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_LIST_LIMIT,
                                "default": 100,
                            },
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "description": "next_after of the previous page",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                    ],
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
                    "summary": "One job",
                    "parameters": [_JOB_ID],
                    "responses": {"200": job_answer, **_errors(401, 404, 503)},
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
            "/stats": {
                "get": {
                    "summary": "Jobs per queue and state, and live workers",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["queues", "workers"],
                                "properties": {
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
            "/health": {
                "get": {
                    "summary": "Liveness; no database call",
                    "security": [],
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"status": {"const": "ok"}}}, "Alive"
                        )
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
