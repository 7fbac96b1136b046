"""The OpenAPI 3.1 document of the HTTP API, served at /openapi.json.

Generated from the operations (endpoints.py) and the models that validate them
(errands/queue/requests.py): request bodies, query parameters and answers are
the JSON Schemas pydantic writes for those types, so the document cannot drift
from the checks. What the models cannot say is written here, once: the errors
every operation may meet (the transport's limits, framing, throttling) and why,
the Idempotency-Key header, and the security scheme. The schemathesis test
(tests/test_api_contract.py) checks the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from errands.api.endpoints import PATH_PARAMETERS, Answer, Operation
from errands.api.errors import Error
from errands.api.inputs import MAX_BODY_BYTES
from errands.api.transport import DEFAULT_LIMITS as _LIMITS
from errands.queue.requests import IdempotencyKey

REF = "#/components/schemas/{model}"

# Why each error status may be answered.
_REASONS = {
    400: "Unparsable JSON or a body that is not UTF-8, a repeated header, or a header or "
    "query string that is not UTF-8",
    401: "Missing or unknown bearer token (when ERRANDS_API_TOKENS is set)",
    404: "No such job",
    408: f"The request line and headers took over {_LIMITS.head_timeout:g} s, "
    f"or the body over {_LIMITS.body_timeout:g} s",
    409: "Idempotency key taken by another request (a stored job's, another job's of the "
    "same batch, or the body's and the header's differ), or a state that forbids the action",
    413: f"The body exceeds {MAX_BODY_BYTES} bytes",
    415: "The body is not application/json in UTF-8, or has a Content-Encoding",
    422: "Invalid fields or query parameters, each named in details",
    429: "A wrong token after too many refused tokens from this address within a minute; "
    "try again after Retry-After seconds",
    431: f"The request line and headers exceed {_LIMITS.max_head_bytes} bytes "
    f"or {_LIMITS.max_headers} lines",
    501: "A transfer coding other than chunked",
    503: "The database is unavailable, or the server has too many connections or requests",
}
# Every operation may meet the transport's limits (408, 431, 503 beyond the connections),
# framing errors (400, 501) and unknown query parameters (422); one that wants a token, the
# throttling of wrong guesses (429).
_EVERY = frozenset({400, 408, 422, 431, 501, 503})


class _Schema(GenerateJsonSchema):
    """pydantic's JSON Schema, without a title per field, and with a dict's key pattern as
    `propertyNames` (pydantic writes `patternProperties`, which lets other keys through)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        generated = super().dict_schema(schema)
        patterns = generated.pop("patternProperties", None)
        if patterns:
            ((pattern, values),) = patterns.items()
            generated["propertyNames"] = {"pattern": pattern}
            generated["additionalProperties"] = values
        return generated


def document(operations: Iterable[Operation]) -> dict[str, Any]:
    operations = list(operations)
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "errands",
            "version": "1",
            "description": "Submit and inspect background jobs. Errors use one shape: "
            '{"error": {"code", "message", "details"}}.',
        },
        "components": {
            "schemas": schemas.components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }


def _operation(op: Operation, schemas: _Schemas) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schemas.of(kind)}
        for name, kind in PATH_PARAMETERS.items()
        if f"{{{name}}}" in op.path
    ]
    parameters += _query(op.query, schemas)
    described: dict[str, Any] = {"summary": op.summary}
    if op.body is not None:
        described["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.of(op.body)}},
        }
        if "idempotency_key" in op.body.model_fields:
            parameters.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": schemas.of(IdempotencyKey),
                    "description": "Same as the idempotency_key field, in UTF-8",
                }
            )
    if parameters:
        described["parameters"] = parameters
    if not op.token:
        described["security"] = []
    errors = _EVERY | op.errors | ({429} if 401 in op.errors else set())
    error = schemas.of(Error, "serialization")
    described["responses"] = {
        **{str(answer.status): _answer(answer, schemas) for answer in op.answers},
        **{
            str(status): {
                "description": _REASONS[status],
                "content": {"application/json": {"schema": error}},
            }
            for status in sorted(errors)
        },
    }
    return described


def _answer(answer: Answer, schemas: _Schemas) -> dict[str, Any]:
    media = "text/plain" if answer.shape is str else "application/json"
    described: dict[str, Any] = {
        "description": answer.description,
        "content": {media: {"schema": schemas.of(answer.shape, "serialization")}},
    }
    if answer.headers:
        described["headers"] = dict(answer.headers)
    return described


def _query(model: type[BaseModel], schemas: _Schemas) -> list[dict[str, Any]]:
    """A query model's fields as parameters: a query string cannot say null, so an optional
    parameter is documented as its value's schema alone."""
    generated = schemas.of(model, inline=True)
    required = set(generated.get("required", []))
    parameters = []
    for name, schema in generated.get("properties", {}).items():
        description = schema.pop("description", None)
        parameter = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _not_null(schema),
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    choices = schema.pop("anyOf", None)
    if choices is not None:
        (value,) = [choice for choice in choices if choice != {"type": "null"}]
        schema = {**value, **schema}
    if schema.get("default", ...) is None:
        del schema["default"]
    return schema


class _Schemas:
    """The schemas of the document's types; named ones (models, enums, recursive aliases)
    become components, referred to by $ref."""

    def __init__(self) -> None:
        self._definitions: dict[str, Any] = {}

    def of(self, kind: Any, mode: JsonSchemaMode = "validation", inline: bool = False) -> Any:
        core: CoreSchema = TypeAdapter(kind).core_schema
        generator = _Schema(ref_template=REF)
        generated = generator.generate(core, mode)
        self._definitions.update(generated.pop("$defs", {}))
        if not inline and "title" in generated and "properties" in generated:
            name = generated["title"]
            self._definitions[name] = generated
            return {"$ref": REF.format(model=name)}
        return generated

    def components(self) -> dict[str, Any]:
        return dict(sorted(self._definitions.items()))
