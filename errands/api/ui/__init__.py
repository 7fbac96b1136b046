"""The web dashboard at /ui: queues, jobs, workers and schedules, and actions on them."""
