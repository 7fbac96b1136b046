"""The thin HTTP shim: submission, inspection, health and metrics over the queue functions."""

from errands.api.app import App, Readiness
from errands.api.server import listen, serve, url_of

__all__ = ["App", "Readiness", "listen", "serve", "url_of"]
