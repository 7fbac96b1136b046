"""The parent process: forks, watches and restarts children; releases, reaps; signals.

Internal to errands: import from the module that defines a name.
"""
