"""Where the catalog lives: --db-url, then $ENCLAVE_DB_URL, then STATE_DIR/catalog.sqlite."""

from __future__ import annotations

import sqlite3

import pytest

from catalog import InvalidInput, default_database_url, open_catalog, resolve_database_url


def test_override_beats_environment_beats_default(tmp_path, monkeypatch):
    monkeypatch.delenv("ENCLAVE_DB_URL", raising=False)
    assert resolve_database_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/catalog.sqlite"
    assert default_database_url(tmp_path) == resolve_database_url(tmp_path)
    monkeypatch.setenv("ENCLAVE_DB_URL", "postgresql://env/db")
    assert resolve_database_url(tmp_path) == "postgresql://env/db"
    assert resolve_database_url(tmp_path, "postgresql://flag/db") == "postgresql://flag/db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x/y", "unsupported catalog database"),
        ("not a url", "bad database URL"),
        ("sqlite:////no/such/dir/catalog.sqlite", "does not exist"),
    ],
)
def test_bad_urls_are_named(url, message):
    with pytest.raises(InvalidInput, match=message):
        open_catalog(url)


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path):
    """The web page keeps answering while ingestion holds the write lock."""
    url = default_database_url(tmp_path)
    catalog = open_catalog(url)
    catalog.create_token("root", "admin", actor="admin:test")
    writer = sqlite3.connect(tmp_path / "catalog.sqlite", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        assert catalog.list_datasets() == []
        assert catalog.audit_events(1)[0].action == "token.create"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        catalog.close()


def test_search_benchmark_runs_at_small_scale(fresh_postgres_database):
    from benchmarks.catalog_search import measure_search_latency

    result = measure_search_latency(fresh_postgres_database, datasets=300, files=3000, queries=30)
    assert result["datasets"] == 300 and result["files"] == 3000
    assert 0 < result["p50_ms"] <= result["p95_ms"]
    assert result["per_query"]["common word"]["hits"] > 0
    assert result["per_query"]["exact name"]["hits"] >= 1
    assert result["per_query"]["no match"]["hits"] == 0
