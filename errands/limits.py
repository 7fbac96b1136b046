"""The bounds every entry point enforces, written once.

The HTTP API, the Python client, the CLI and the dashboard all validate with
the models of requests.py, which take their numbers from here; so does the
OpenAPI document.
"""

from __future__ import annotations

MAX_JOB_ID = 2**63 - 1  # ids are bigint
PRIORITY_RANGE = (-(2**31), 2**31 - 1)  # an integer column
MAX_ATTEMPTS_LIMIT = 1000
MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600  # ten years: delays, retries, periodic intervals
# Years a run_at may name: whatever its offset, and whatever a session's time zone, such a
# time stays inside what Python's datetime and psycopg can hold (years 1 to 9999).
RUN_AT_YEARS = (2, 9998)
MAX_IDEMPOTENCY_KEY = 255  # characters
MAX_UNIQUE_KEY = 255  # characters
MAX_LIMIT = 1_000_000  # jobs at once, or starts per period, of one concurrency or rate limit
MAX_PAYLOAD_DEPTH = 64  # levels of nested arrays and objects
MAX_LIST_LIMIT = 1000  # jobs in one page of a list
MAX_BATCH = 1000  # jobs in one batch submission
MAX_PARENTS = 10_000  # jobs one job may run after
MAX_WORKFLOW = 10_000  # jobs stored as one workflow
MAX_REF = 100  # characters of a workflow job's ref
MAX_WAIT_SECONDS = 60.0  # a long poll's longest wait
MAX_PROGRESS_BYTES = 2048  # a progress object, as compact JSON in UTF-8

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_LIST_LIMIT = 100
