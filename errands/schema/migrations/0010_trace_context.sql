-- older code: runs (a new nullable column, which older code neither writes nor reads)
-- The W3C trace context (traceparent, tracestate) of the OpenTelemetry span that
-- enqueued the job, when the enqueueing process traces: each attempt's span
-- continues that trace (docs/guides/opentelemetry.md). Null otherwise.
alter table errands_jobs add column trace_context jsonb;
