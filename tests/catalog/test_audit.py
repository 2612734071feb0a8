"""Every state change is audited with its actor, and the database refuses to rewrite history."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError


def test_each_change_writes_one_audit_row_with_its_actor(catalog, ingest):
    ingest(transfer_id="t-1")
    catalog.publish("lung-ct", 1, actor="admin:root")
    catalog.grant("lung-ct", 1, group="radiology", actor="admin:root")
    catalog.revoke("lung-ct", 1, group="radiology", actor="admin:eve")
    catalog.retire("lung-ct", 1, actor="admin:root", reason="withdrawn by provider")
    events = list(reversed(catalog.audit_events(100)))
    assert [(e.action, e.actor) for e in events] == [
        ("provider.add", "admin:test"),
        ("transfer.record", "provider:st-mary"),
        ("version.catalog", "ingestion:worker"),
        ("version.publish", "admin:root"),
        ("grant.add", "admin:root"),
        ("grant.revoke", "admin:eve"),
        ("version.retire", "admin:root"),
    ]
    assert events[-1].target == "dataset:lung-ct@1"
    assert events[-1].details["reason"] == "withdrawn by provider"
    assert events[2].details["transfer"] == "t-1"


def test_a_failed_change_leaves_no_audit_row(catalog, ingest):
    ingest()
    before = len(catalog.audit_events(1000))
    with pytest.raises(Exception, match="only published versions"):
        catalog.grant("lung-ct", 1, group="radiology", actor="admin:root")
    assert len(catalog.audit_events(1000)) == before


def test_changes_need_an_actor(catalog, ingest):
    ingest()
    with pytest.raises(Exception, match="needs an actor"):
        catalog.publish("lung-ct", 1, actor="")
    assert catalog.get_dataset("lung-ct").versions[0].status == "pending-review"


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_events SET actor = 'someone-else'", "DELETE FROM audit_events"],
)
def test_the_database_refuses_to_update_or_delete_audit_rows(catalog, ingest, statement):
    ingest()
    count = len(catalog.audit_events(1000))
    with pytest.raises(DBAPIError, match="append-only"):
        with catalog.engine.begin() as conn:
            conn.execute(text(statement))
    assert len(catalog.audit_events(1000)) == count
    assert {e.actor for e in catalog.audit_events(1000)} != {"someone-else"}
    if catalog.dialect == "postgresql":  # SQLite has no TRUNCATE statement
        with pytest.raises(DBAPIError, match="append-only"):
            with catalog.engine.begin() as conn:
                conn.execute(text("TRUNCATE audit_events"))


def test_version_content_is_immutable_in_the_database(catalog, ingest):
    ingest()
    for statement in (
        "UPDATE dataset_versions SET content_hash = 'tampered'",
        "UPDATE dataset_versions SET store_location = '/elsewhere'",
        "DELETE FROM dataset_versions",
    ):
        with pytest.raises(DBAPIError, match="immutable"):
            with catalog.engine.begin() as conn:
                conn.execute(text(statement))
    # Status changes (curation) are allowed.
    catalog.publish("lung-ct", 1, actor="admin:root")
    assert catalog.get_version("lung-ct", 1).summary.content_hash != "tampered"
