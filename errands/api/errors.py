"""Every answer that is not a success, in one shape: {"error": {"code", "message", "details"}}.

Handlers raise HTTPError; Starlette's own refusals (no route, a wrong method)
and database errors are turned into the same shape by the exception handlers
registered here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from typing_extensions import TypedDict  # pydantic reads TypedDicts from it before 3.12

from errands.errors import FieldError
from errands.log import get_logger

_log = get_logger("errands.api")

# The code of each refusal Starlette makes itself, by status.
_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
}


class Detail(TypedDict):
    field: str
    message: str


class ErrorBody(TypedDict):
    code: str
    message: str
    details: list[Detail]


class Error(TypedDict):
    error: ErrorBody


class HTTPError(HTTPException):
    """An error answer: its status, a code for programs, a message for people, the fields."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, dict(headers or {}))
        self.code = code
        self.details = details or []

    def response(self) -> Response:
        return error_response(self.status_code, self.code, self.detail, self.details, self.headers)


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body: Error = {
        "error": {
            "code": code,
            "message": message,
            "details": [{"field": d.field, "message": d.message} for d in details or []],
        }
    }
    return JSONResponse(body, status, headers=dict(headers or {}))


def invalid(errors: list[FieldError]) -> HTTPError:
    fields = ", ".join(e.field for e in errors)
    return HTTPError(422, "invalid_request", f"invalid fields: {fields}", errors)


def _log_database_error(event: str, exc: psycopg.Error, level: str = "error") -> None:
    """Named, never quoted: the text of a database error may quote the values (a check
    violation's DETAIL is the failing row, payload included)."""
    diag = exc.diag
    getattr(_log, level)(
        event,
        error=type(exc).__name__,
        sqlstate=exc.sqlstate,
        table=diag.table_name,
        column=diag.column_name,
        constraint=diag.constraint_name,
    )


def internal_error() -> Response:
    return error_response(500, "internal_error", "unexpected error; see the server log")


# -- exception handlers -----------------------------------------------------------------------


async def on_http_exception(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPError):
        return exc.response()
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = {
        404: f"no such endpoint: {request.method} {request.url.path}",
        405: f"use {(exc.headers or {}).get('Allow', 'another method')}",
    }.get(status, exc.detail)
    return error_response(status, _CODES.get(status, "error"), message, headers=exc.headers)


async def on_client_disconnect(request: Request, exc: Exception) -> Response:
    return error_response(400, "client_disconnected", "the client went away")


async def on_database_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, psycopg.Error)
    if isinstance(exc, psycopg.OperationalError):
        _log_database_error("database unavailable", exc)
        return error_response(503, "database_unavailable", "the database is unavailable")
    if isinstance(exc, psycopg.errors.CheckViolation):
        # A value the validation let through and a check refused: nothing was stored.
        _log_database_error("a check refused a request that passed validation", exc, "warning")
        constraint = exc.diag.constraint_name or "a constraint"
        message = f"the database refused the request ({constraint})"
        return error_response(422, "invalid_request", message)
    _log_database_error("unexpected database error", exc)
    return internal_error()


HANDLERS: dict[Any, Any] = {
    HTTPException: on_http_exception,
    ClientDisconnect: on_client_disconnect,
    psycopg.Error: on_database_error,
}
