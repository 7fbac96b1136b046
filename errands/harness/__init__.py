"""Machinery shared by `errands bench` and `errands chaos`: daemons, processes, pgbench.

The suites themselves (profiles, scenarios, recorded results) live in the
repository's `bench/` and `chaos/` folders.
"""
