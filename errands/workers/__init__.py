"""The worker process: claim loop, execution on threads, lease heartbeats.

Internal to errands: import from the module that defines a name.
"""
