"""MkDocs hook: the HTTP API reference, rendered at build time from the OpenAPI document.

The document comes from the same function that serves /openapi.json
(`errands.api.openapi.document` over the API's operations), so the reference cannot
drift from the server. The site gets it as /openapi.json, and the page that holds the
marker `<!-- openapi -->` gets it as Markdown: every operation with its parameters,
body and answers, then every schema with its fields. No viewer script, nothing
fetched: it reads offline.
"""

from __future__ import annotations

import json
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

from errands.api.endpoints import operations
from errands.api.openapi import document

MARKER = "<!-- openapi -->"
METHODS = ("get", "post", "put", "patch", "delete")
# Errors of the transport and of the gate (token, framing), which (nearly) every operation may
# answer: listed once, above the operations.
COMMON = ("400", "401", "408", "413", "415", "429", "431", "501", "503")


def _document() -> dict[str, Any]:
    return document(operations(30.0, None, None))


def on_files(files: Files, config: MkDocsConfig) -> Files:
    text = json.dumps(_document(), indent=2) + "\n"
    files.append(File.generated(config, "openapi.json", content=text))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render(_document()))


def render(doc: dict[str, Any]) -> str:
    schemas = doc["components"]["schemas"]
    reasons = {
        status: answer["description"]
        for item in doc["paths"].values()
        for op in item.values()
        for status, answer in op["responses"].items()
        if status in COMMON
    }
    out = ["## Errors of the transport and the gate", ""]
    out += ["Any operation may answer these (those that take no body or token, fewer of them):", ""]
    out += ["| status | when |", "|---|---|"]
    out += [f"| {status} | {_cell(reasons[status])} |" for status in COMMON if status in reasons]
    out += ["", "Each error body is an [`Error`](#schema-error).", "", "## Operations", ""]
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                out += _operation(method, path, item[method])
    out += ["## Schemas", ""]
    for name, schema in schemas.items():
        out += _schema(name, schema)
    return "\n".join(out) + "\n"


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    out = [f"### `{method.upper()} {path}`", "", _cell(op.get("summary", "")) + ".", ""]
    if op.get("security") == []:
        out += ["No token needed, even with `ERRANDS_API_TOKENS` set.", ""]
    params = op.get("parameters", [])
    if params:
        out += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for p in params:
            out.append(
                f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}))} "
                f"| {'yes' if p.get('required') else 'no'} | {_cell(p.get('description', ''))} |"
            )
        out.append("")
    body = op.get("requestBody")
    if body:
        schema = body["content"]["application/json"]["schema"]
        out += [f"Body (`application/json`): {_type(schema)}.", ""]
    out += ["| status | meaning | body |", "|---|---|---|"]
    for status, answer in op["responses"].items():
        if status in COMMON:
            continue
        content = answer.get("content", {})
        shown = "—"
        for media, value in content.items():
            shown = _type(value.get("schema", {})) if "json" in media else f"`{media}`"
        headers = ", ".join(f"`{h}`" for h in answer.get("headers", {}))
        meaning = _cell(answer["description"]) + (f" (headers: {headers})" if headers else "")
        out.append(f"| {status} | {meaning} | {shown} |")
    return [*out, ""]


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f"### {name} {{#schema-{name.lower()}}}", ""]
    if "description" in schema:
        out += [_cell(schema["description"]), ""]
    props = schema.get("properties")
    if props:
        required = set(schema.get("required", []))
        out += ["| field | type | required | default | description |", "|---|---|---|---|---|"]
        for field, sub in props.items():
            default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
            out.append(
                f"| `{field}` | {_type(sub)} | {'yes' if field in required else 'no'} "
                f"| {default} | {_cell(_description(sub))} |"
            )
        out.append("")
    elif "enum" in schema:
        out += ["One of " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".", ""]
    out += ['??? note "JSON Schema"', "", "    ```json"]
    out += ["    " + line for line in json.dumps(schema, indent=2).splitlines()]
    return [*out, "    ```", ""]


def _description(schema: dict[str, Any]) -> str:
    if "description" in schema:
        return str(schema["description"])
    for option in schema.get("anyOf", []):
        if "description" in option:
            return str(option["description"])
    return ""


def _type(schema: dict[str, Any]) -> str:
    """A schema in a few words: a link for a named one, the bounds of a plain one."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#schema-{name.lower()})"
    if "anyOf" in schema:
        kinds = [_type(s) for s in schema["anyOf"]]
        return " or ".join(k for k in kinds if k != "null") + (
            " or null" if "null" in kinds else ""
        )
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return "object"
    words = [str(kind)]
    if "enum" in schema:
        words = ["one of " + ", ".join(f"`{v}`" for v in schema["enum"])]
    if "format" in schema:
        words.append(f"({schema['format']})")
    bounds = [
        f"{label} {schema[key]}"
        for key, label in (
            ("minimum", "≥"),
            ("maximum", "≤"),
            ("minLength", "length ≥"),
            ("maxLength", "length ≤"),
            ("maxItems", "at most"),
        )
        if key in schema
    ]
    if bounds:
        words.append(", ".join(bounds))
    if "pattern" in schema and len(schema["pattern"]) <= 40:
        words.append(f"matching `{schema['pattern']}`")
    return " ".join(words)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")
