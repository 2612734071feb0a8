"""The temporary PostgreSQL server starts, serves, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests import postgres_server
from tests.postgres_server import PostgresUnavailable, TemporaryPostgres


def test_databases_on_the_session_server(postgres_server):
    url = postgres_server.create_database("scratch_db")
    try:
        assert url.startswith("postgresql+psycopg://")
        with psycopg.connect(
            host=str(postgres_server.socket_dir),
            port=postgres_server.port,
            user=postgres_server.user,
            dbname="scratch_db",
        ) as conn:
            assert conn.execute("select current_database()").fetchone() == ("scratch_db",)
    finally:
        postgres_server.drop_database("scratch_db")
    # Unix socket only, in a private directory.
    assert oct(postgres_server.socket_dir.stat().st_mode & 0o777) == "0o700"


def test_server_is_stopped_and_removed_on_exit():
    server = TemporaryPostgres()
    with server as url:
        root = Path(server.root)
        pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        assert "host=" in url and root.is_dir()
    assert not root.exists()
    assert not _running(pid)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may be slow to reap the postmaster)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_missing_postgresql_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(postgres_server.BINDIR_ENV, raising=False)
    monkeypatch.setattr(postgres_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres_server.glob, "glob", lambda pattern: [])
    with pytest.raises(PostgresUnavailable, match="install the Debian package 'postgresql'"):
        postgres_server.find_postgres_bindir()
    with pytest.raises(PostgresUnavailable, match="no initdb/pg_ctl"):
        TemporaryPostgres(bindir=tmp_path).start()
