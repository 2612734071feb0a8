"""Alembic migrations: the only way the catalog schema changes."""
