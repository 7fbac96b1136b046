"""Operations on the jobs table: every state transition of a job, each one statement.

Internal to errands: import from the module that defines a name (errands.queue.lease,
errands.queue.submit, ...); the public surface is `errands` itself (docs/reference/python.md).
"""
