"""The web dashboard at /ui: queues, jobs, workers and schedules, and actions on them."""

from errands.api.ui.dashboard import Dashboard

__all__ = ["Dashboard"]
