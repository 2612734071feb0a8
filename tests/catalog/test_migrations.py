"""The schema exists only through Alembic: up from empty to head, down to base, and back."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from catalog import migrate, open_catalog
from catalog.db import create_catalog_engine
from catalog.models import Base

TABLES = {
    "providers",
    "transfers",
    "datasets",
    "dataset_versions",
    "version_modalities",
    "studies",
    "series",
    "files",
    "validation_reports",
    "feature_tables",
    "grants",
    "principals",
    "principal_groups",
    "api_tokens",
    "audit_events",
    "audit_checkpoints",
}


def test_upgrade_from_empty_to_head_then_downgrade_to_base(empty_database_url):
    engine = create_catalog_engine(empty_database_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert TABLES <= set(inspect(engine).get_table_names())

        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

        migrate.upgrade(engine)  # and up again: downgrades leave nothing behind
        assert TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_models_match_the_migrated_schema(catalog_url):
    """The typed models and the migrations describe the same tables and columns."""
    engine = create_catalog_engine(catalog_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    # The PostgreSQL-only trigram index lives in a migration, not in the models.
    diff = [
        d
        for d in diff
        if not (isinstance(d, tuple) and d[0] == "remove_index" and d[1].name.endswith("_trgm"))
    ]
    assert diff == []


def test_opening_an_up_to_date_catalog_changes_nothing(catalog_url):
    before = open_catalog(catalog_url)
    try:
        revision = migrate.current_revision(before.engine)
    finally:
        before.close()
    again = open_catalog(catalog_url)
    try:
        assert migrate.current_revision(again.engine) == revision == migrate.head_revision()
    finally:
        again.close()


def test_migrations_ship_inside_the_package():
    """No alembic.ini: the script location is the package's own folder."""
    config = migrate.alembic_config()
    location = config.get_main_option("script_location")
    assert location == str(migrate.MIGRATIONS_DIR)
    assert (migrate.MIGRATIONS_DIR / "env.py").is_file()
    assert migrate.head_revision() == "0007"


def test_grants_made_before_access_modes_become_desktop_grants(catalog, catalog_url, ingest):
    """Until 0004 a grant let JupyterLab show the data; after it, only --mode notebook does."""
    version = ingest()
    catalog.publish("lung-ct", version.version, actor="admin:ana")
    catalog.grant("lung-ct", version.version, group="radiology", mode="notebook", actor="admin:ana")
    engine = create_catalog_engine(catalog_url)
    try:
        migrate.downgrade(engine, "0003")  # as the grant would have been made before 0004
        assert "mode" not in {c["name"] for c in inspect(engine).get_columns("grants")}
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    (grant,) = catalog.grants("lung-ct", version.version)
    assert grant.mode == "desktop"
