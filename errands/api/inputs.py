"""Reading a request: its headers, query string and JSON body, refused in the API's words.

Starlette parses HTTP; what it lets through that the API must not accept (a
header the API reads given twice, a body in UTF-16, a query parameter in
other digits) is refused here with the status the documentation promises (docs/reference/http.md).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request

from errands.api.errors import HTTPError, invalid
from errands.errors import FieldError
from errands.queue.requests import TEXT, field_errors

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 1024 * 1024
# Headers the API reads: each must come once, or which one counts would be a guess
# (and a proxy may have picked the other).
SINGLE_HEADERS = frozenset(
    {
        b"authorization",
        b"content-type",
        b"content-encoding",
        b"content-length",
        b"transfer-encoding",
        b"idempotency-key",
    }
)


def check_framing(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The headers the API reads (names in lower case, as uvicorn gives them), or 400 for
    one that came twice, 501 for a transfer coding, 413 for a body announced over the limit."""
    read: dict[bytes, bytes] = {}
    for name, value in raw_headers:
        if name in SINGLE_HEADERS:
            if name in read:
                raise HTTPError(400, "bad_request", f"the {name.decode()} header must be sent once")
            read[name] = value
    codings = read.get(b"transfer-encoding", b"chunked").lower().split(b",")
    if [coding.strip() for coding in codings] != [b"chunked"]:
        raise HTTPError(
            501, "not_implemented", "the only transfer coding understood is chunked, alone"
        )
    declared = read.get(b"content-length", b"").lstrip(b"0")
    if declared.isdigit() and (len(declared) > 9 or int(declared) > MAX_BODY_BYTES):
        raise HTTPError(413, "payload_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    return read


async def body(request: Request) -> bytes:
    """The whole body, refused with 413 as soon as it grows past the limit.

    (Starlette's own `max_body_size` answers in plain text, not in the API's shape.)
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPError(413, "payload_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def header(headers: Headers, name: str) -> str | None:
    """A header's value as text: UTF-8 (what clients send today), else ISO-8859-1.

    HTTP's historical charset is the fallback, so that no value is refused for its bytes.
    """
    value = headers.get(name)  # Starlette decodes header bytes as ISO-8859-1
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return value


def query(raw: bytes, model: type[M]) -> M:
    """The query string, validated by `model` as text; 422 naming each bad parameter."""
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise HTTPError(
            400, "bad_request", "the query string is not percent-encoded UTF-8"
        ) from None
    counts = Counter(name for name, _ in pairs)
    errors = [FieldError(name, "must be given once") for name, n in counts.items() if n > 1]
    try:
        values = model.model_validate(dict(pairs), context=TEXT)
    except ValidationError as exc:
        errors += field_errors(exc, unknown="unknown query parameter")
    if errors:
        raise invalid(errors)
    return values


def json_body(headers: Headers, body: bytes) -> Any:
    """The parsed JSON body; 415 for another content type or a coding, 400 for unparsable
    JSON or a body that is not UTF-8 (json.loads would also take UTF-16 and UTF-32)."""
    media_type, _, parameters = (header(headers, "content-type") or "").partition(";")
    charset = parameters.strip().lower().removeprefix("charset=").strip('"')
    if media_type.strip().lower() != "application/json" or charset not in ("", "utf-8"):
        raise HTTPError(
            415,
            "unsupported_media_type",
            "send the body as application/json in UTF-8 (Content-Type)",
        )
    if (header(headers, "content-encoding") or "identity").strip().lower() != "identity":
        raise HTTPError(
            415, "unsupported_media_type", "send the body without a Content-Encoding (no gzip)"
        )
    try:
        # utf-8-sig: a byte order mark, which RFC 8259 lets a parser ignore, is ignored.
        return json.loads(body.decode("utf-8-sig"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise HTTPError(400, "invalid_json", "the body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        # ValueError: invalid JSON, NaN or Infinity, or an integer past Python's 4,300
        # digits; RecursionError: arrays or objects nested about 1,000 deep.
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise HTTPError(400, "invalid_json", f"the body is not valid JSON: {reason}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
