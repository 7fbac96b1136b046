"""Integrations with application frameworks, each behind an extra of its own."""
