"""An OpenTelemetry SDK set up as an application would, exporting to files a test reads.

Imported first by every process of a test (as a task module of the daemon, so
in each child after fork; before the application under uvicorn): each process
appends its spans, one JSON object a line, to <ERRANDS_TEST_SPANS>/<pid>.jsonl.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class FileExporter(SpanExporter):
    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with (self._directory / f"{os.getpid()}.jsonl").open("a") as out:
            for span in spans:
                out.write(json.dumps(as_dict(span)) + "\n")
        return SpanExportResult.SUCCESS


def as_dict(span: ReadableSpan) -> dict[str, object]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
        "status": span.status.status_code.name,
    }


provider = TracerProvider()
provider.add_span_processor(
    SimpleSpanProcessor(FileExporter(Path(os.environ["ERRANDS_TEST_SPANS"])))
)
trace.set_tracer_provider(provider)
