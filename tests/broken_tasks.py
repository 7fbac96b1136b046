"""A task module that cannot be imported, as a bad deploy would ship."""

raise RuntimeError("this module is broken on purpose")
