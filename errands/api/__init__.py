"""The thin HTTP shim: submission, inspection, health and metrics over the queue functions."""

from errands.api.app import App
from errands.api.server import serve

__all__ = ["App", "serve"]
