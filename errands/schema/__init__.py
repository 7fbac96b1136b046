"""The database schema: numbered SQL migrations, the runner that applies them, and the check
every process makes before it uses the database.

Internal to errands: import from the module that defines a name (errands.schema.migrator).
"""
