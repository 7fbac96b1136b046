"""The parent process: forks, watches and restarts children; releases, reaps; signals."""

from errands.supervisor.supervisor import Supervisor, SupervisorOptions

__all__ = ["Supervisor", "SupervisorOptions"]
