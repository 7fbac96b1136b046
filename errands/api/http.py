"""The little HTTP vocabulary the API needs on top of ASGI: requests, responses, errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from errands.errors import FieldError

MAX_BODY_BYTES = 1024 * 1024
# Headers the API reads: each must come once, or which one counts would be a guess
# (and a proxy may have picked the other).
SINGLE_HEADERS = (
    "authorization",
    "content-type",
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "idempotency-key",
)


@dataclass
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]  # in order, blank values and repeats kept
    headers: dict[str, bytes]  # lower-case names; a repeated header keeps its last value
    repeated: frozenset[str] = frozenset()  # header names given more than once
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)  # from the path
    values: dict[str, Any] = field(default_factory=dict)  # the query, parsed by its rules
    client: str = ""  # the peer's address (a trusted proxy's X-Forwarded-For, per uvicorn)

    @classmethod
    def from_scope(cls, scope: dict[str, Any]) -> Request:
        headers: dict[str, bytes] = {}
        repeated = set()
        for raw_name, value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            if name in headers:
                repeated.add(name)
            headers[name] = value
        return cls(
            method=scope["method"],
            path=scope["path"],
            query=_query(scope.get("query_string", b"")),
            headers=headers,
            repeated=frozenset(repeated),
            client=str((scope.get("client") or ("",))[0]),
        )

    def header(self, name: str) -> str | None:
        """A header's value as text: UTF-8 (what clients send today), else ISO-8859-1.

        HTTP's historical charset is the fallback, so that no value is refused for its bytes.
        """
        value = self.headers.get(name)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")


def _query(raw: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise HTTPError(
            400, "bad_request", "the query string is not percent-encoded UTF-8"
        ) from None


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
    """The parsed JSON body; 415 for another content type or a coding, 400 for unparsable JSON."""
    media_type, _, parameters = (request.header("content-type") or "").partition(";")
    charset = parameters.strip().lower().removeprefix("charset=").strip('"')
    if media_type.strip().lower() != "application/json" or charset not in ("", "utf-8"):
        raise HTTPError(
            415,
            "unsupported_media_type",
            "send the body as application/json in UTF-8 (Content-Type)",
        )
    if (request.header("content-encoding") or "identity").strip().lower() != "identity":
        raise HTTPError(
            415, "unsupported_media_type", "send the body without a Content-Encoding (no gzip)"
        )
    try:
        return json.loads(request.body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        # ValueError: invalid JSON or UTF-8, NaN or Infinity, or an integer past Python's
        # 4,300 digits; RecursionError: arrays or objects nested about 1,000 deep.
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise HTTPError(400, "invalid_json", f"the body is not valid JSON: {reason}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
