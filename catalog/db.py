"""Where the catalog database lives and how to connect to it.

SQLite (one file in the state directory) is the default; PostgreSQL is for production
and the test suite. Every SQLite transaction starts with ``BEGIN IMMEDIATE``, so two
processes (ingestion and the API) serialise their writes instead of failing with
"database is locked" half way through.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from catalog.errors import InvalidInput

DB_URL_ENV = "ENCLAVE_DB_URL"
# Execution option marking a read-only transaction (plain deferred BEGIN on SQLite).
READ_ONLY = "enclave_read_only"
CATALOG_FILENAME = "catalog.sqlite"


def default_database_url(state_dir: Path) -> str:
    """The SQLite file ``STATE_DIR/catalog.sqlite``."""
    return f"sqlite:///{Path(state_dir).expanduser().resolve() / CATALOG_FILENAME}"


def resolve_database_url(state_dir: Path, override: str | None = None) -> str:
    """``override`` (``--db-url``), else ``$ENCLAVE_DB_URL``, else the SQLite default."""
    for candidate in (override, os.environ.get(DB_URL_ENV)):
        if candidate:
            return candidate
    return default_database_url(state_dir)


def create_catalog_engine(url: str) -> Engine:
    """An engine configured for the catalog's needs on SQLite or PostgreSQL."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInput(f"bad database URL {url!r}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            parent = Path(database).expanduser().parent
            if not parent.is_dir():
                raise InvalidInput(f"directory for catalog database {database} does not exist")
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_size=10, max_overflow=20)
    raise InvalidInput(f"unsupported catalog database {url!r}: use sqlite:/// or postgresql://")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, connection_record) -> None:  # noqa: ANN001
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        read_only = conn.get_execution_options().get(READ_ONLY)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
