"""The little HTTP vocabulary the API needs on top of ASGI: requests, responses, errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from errands.errors import FieldError

MAX_BODY_BYTES = 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)  # from the path

    @classmethod
    def from_scope(cls, scope: dict[str, Any]) -> Request:
        return cls(
            method=scope["method"],
            path=scope["path"],
            query=dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
        )


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    job_id: int | None = None  # for the request log

    @classmethod
    def json(cls, status: int, data: Any, **kwargs: Any) -> Response:
        return cls(status, json.dumps(data, separators=(",", ":")).encode(), **kwargs)


class HTTPError(Exception):
    """An error answer in the design's shape: {"error": {"code", "message", "details"}}."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[FieldError] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or []

    def response(self) -> Response:
        body = {
            "error": {
                "code": self.code,
                "message": self.message,
                "details": [{"field": d.field, "message": d.message} for d in self.details],
            }
        }
        return Response.json(self.status, body, headers=self.headers)


def invalid(errors: list[FieldError]) -> HTTPError:
    fields = ", ".join(e.field for e in errors)
    return HTTPError(422, "invalid_request", f"invalid fields: {fields}", errors)


def json_body(request: Request) -> Any:
    """The parsed JSON body; 415 for another content type, 400 for unparsable JSON."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPError(
            415, "unsupported_media_type", "send the body as application/json (Content-Type)"
        )
    try:
        return json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
