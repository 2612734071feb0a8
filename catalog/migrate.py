"""Run the catalog's Alembic migrations from code.

There is no alembic.ini: the script location is this package's ``migrations``
folder, so migrations work the same from a checkout and from an installed wheel.
Opening a catalog upgrades to head; nothing else creates tables.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant: serialises concurrent first starts of ingestion and the API on PostgreSQL.
_PG_MIGRATION_LOCK = 0x656E636C  # "encl"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` in one transaction (a no-op when already there)."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    with engine.begin() as conn:
        _lock(conn)
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    with engine.begin() as conn:
        _lock(conn)
        command.downgrade(alembic_config(conn), revision)


def _lock(conn: Connection) -> None:
    # SQLite already holds the write lock (BEGIN IMMEDIATE); PostgreSQL needs one.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
