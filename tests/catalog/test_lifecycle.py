"""A version's life: pending-review -> published -> granted -> visible -> expired/revoked -> retired."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from catalog import Conflict, InvalidInput, NotFound, Principal, UnknownDataset, UnknownVersion
from catalog.models import AccessMode

ALICE = Principal.of("alice", "researcher", ["radiology"])
BOB = Principal.of("bob", "researcher", ["cardiology"])
STUDENT = Principal.of("sam", "student", ["course-101"])
ADMIN = Principal.of("root", "admin")
PROVIDER = Principal.of("st-mary", "provider")


def names(datasets):
    return [d.name for d in datasets]


def test_new_version_is_pending_review_and_invisible_to_researchers(catalog, ingest):
    version = ingest()
    assert version.status == "pending-review"
    assert version.version == 1
    assert names(catalog.list_datasets()) == ["lung-ct"]
    assert catalog.list_datasets(ALICE) == []
    assert catalog.visible_versions(ALICE) == []


def test_only_published_versions_can_be_granted(catalog, ingest):
    ingest()
    with pytest.raises(Conflict, match="pending-review; only published versions can be granted"):
        catalog.grant("lung-ct", 1, group="radiology", actor="admin:root")


def test_full_lifecycle_for_a_group_grant(catalog, ingest):
    ingest()
    published = catalog.publish("lung-ct", "v1", actor="admin:root")
    assert published.status == "published"
    tomorrow = date.today() + timedelta(days=1)
    grant = catalog.grant("lung-ct", 1, group="radiology", expires=tomorrow, actor="admin:root")
    assert grant.group == "radiology" and grant.expires_at is not None

    # The group's member sees it, with what a mount needs; others do not.
    (mount,) = catalog.visible_versions(ALICE)
    assert (mount.name, mount.version) == ("lung-ct", 1)
    assert mount.wrapped_key and mount.store_location and mount.content_hash
    assert names(catalog.list_datasets(ALICE)) == ["lung-ct"]
    assert catalog.visible_versions(BOB) == []
    assert catalog.list_datasets(BOB) == []
    assert catalog.list_datasets(PROVIDER) == []
    with pytest.raises(UnknownDataset):
        catalog.get_dataset("lung-ct", BOB)
    with pytest.raises(UnknownDataset):
        catalog.get_version("lung-ct", 1, BOB)
    assert catalog.get_version("lung-ct", 1, ALICE).summary.status == "published"

    # After the expiry date the grant gives nothing.
    later = datetime.now(UTC) + timedelta(days=3)
    assert catalog.visible_versions(ALICE, now=later) == []
    assert catalog.list_datasets(ALICE, now=later) == []

    # Revoked: gone now too, and revoking twice is a clear error.
    catalog.revoke("lung-ct", 1, group="radiology", actor="admin:root")
    assert catalog.visible_versions(ALICE) == []
    with pytest.raises(NotFound, match="not granted to group radiology"):
        catalog.revoke("lung-ct", 1, group="radiology", actor="admin:root")
    assert [
        g.revoked_at is not None for g in catalog.grants("lung-ct", 1, include_revoked=True)
    ] == [True]


def test_user_grant_and_renewal(catalog, ingest):
    ingest()
    catalog.publish("lung-ct", 1, actor="admin:root")
    catalog.grant("lung-ct", 1, user="bob", expires="2099-01-31", actor="admin:root")
    (mount,) = catalog.visible_versions(BOB)
    assert mount.expires_at == datetime(2099, 2, 1, tzinfo=UTC)  # through the end of the day
    renewed = catalog.grant("lung-ct", 1, user="bob", actor="admin:root")  # no expiry now
    assert renewed.expires_at is None
    assert len(catalog.grants("lung-ct", 1)) == 1
    assert catalog.visible_versions(ALICE) == []


def test_grants_are_desktop_only_unless_an_admin_marks_them_notebook(catalog, ingest):
    ingest()
    catalog.publish("lung-ct", 1, actor="admin:root")
    grant = catalog.grant("lung-ct", 1, group="radiology", actor="admin:root")
    assert grant.mode == AccessMode.DESKTOP
    (mount,) = catalog.visible_versions(ALICE)
    assert mount.mode == AccessMode.DESKTOP
    assert mount.mode.allows(AccessMode.DESKTOP) and not mount.mode.allows(AccessMode.NOTEBOOK)

    # A user grant in notebook mode beside the group's desktop grant: the more open one
    # counts, and the longer expiry of the two.
    alice = catalog.grant(
        "lung-ct", 1, user="alice", mode="notebook", expires="2099-01-31", actor="admin:root"
    )
    assert alice.mode == AccessMode.NOTEBOOK
    (mount,) = catalog.visible_versions(ALICE)
    assert mount.mode == AccessMode.NOTEBOOK and mount.expires_at is None
    assert mount.mode.allows(AccessMode.NOTEBOOK) and mount.mode.allows(AccessMode.DESKTOP)
    with pytest.raises(InvalidInput, match="unknown access mode 'browser'"):
        catalog.grant("lung-ct", 1, user="alice", mode="browser", actor="admin:root")


def test_retired_versions_lose_their_grants_effect(catalog, ingest):
    ingest()
    ingest(content_hash="f" * 64)
    for v in (1, 2):
        catalog.publish("lung-ct", v, actor="admin:root")
        catalog.grant("lung-ct", v, group="course-101", actor="admin:root")
    assert [m.version for m in catalog.visible_versions(STUDENT)] == [1, 2]
    catalog.retire("lung-ct", 1, actor="admin:root", reason="superseded")
    assert [m.version for m in catalog.visible_versions(STUDENT)] == [2]
    (seen,) = catalog.list_datasets(STUDENT)
    assert [v.version for v in seen.versions] == [2]
    with pytest.raises(Conflict, match="already retired"):
        catalog.retire("lung-ct", 1, actor="admin:root")
    with pytest.raises(Conflict, match="retired, not pending-review"):
        catalog.publish("lung-ct", 1, actor="admin:root")
    with pytest.raises(Conflict, match="only published versions"):
        catalog.grant("lung-ct", 1, group="course-101", actor="admin:root")


def test_publishing_twice_and_a_failed_validation_are_refused(catalog, ingest):
    ingest()
    catalog.publish("lung-ct", 1, actor="admin:root")
    with pytest.raises(Conflict, match="is published, not pending-review"):
        catalog.publish("lung-ct", 1, actor="admin:root")
    ingest("bad-set", report_json='{"passed": false, "counts": {"error": 2}, "findings": []}')
    with pytest.raises(Conflict, match="failed validation"):
        catalog.publish("bad-set", 1, actor="admin:root")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"group": "radiology", "expires": "2026-02-30"}, InvalidInput, "bad expiry date"),
        ({"group": "radiology", "expires": "next week"}, InvalidInput, "bad expiry date"),
        ({"group": "radiology", "expires": "2001-01-01"}, InvalidInput, "in the past"),
        ({}, InvalidInput, "exactly one of a group or a user"),
        ({"group": "radiology", "user": "bob"}, InvalidInput, "exactly one"),
        ({"group": "bad group!"}, InvalidInput, "bad group name"),
    ],
)
def test_bad_grants_say_what_is_wrong(catalog, ingest, kwargs, error, message):
    ingest()
    catalog.publish("lung-ct", 1, actor="admin:root")
    with pytest.raises(error, match=message):
        catalog.grant("lung-ct", 1, actor="admin:root", **kwargs)


def test_unknown_dataset_and_version_are_named(catalog, ingest):
    ingest()
    with pytest.raises(UnknownDataset, match="unknown dataset 'nope'"):
        catalog.publish("nope", 1, actor="admin:root")
    with pytest.raises(UnknownVersion, match="'lung-ct' has no version 7"):
        catalog.get_version("lung-ct", 7)
    with pytest.raises(InvalidInput, match="bad version 'latest'"):
        catalog.publish("lung-ct", "latest", actor="admin:root")


def test_edit_survives_the_next_version(catalog, ingest):
    ingest()
    catalog.edit(
        "lung-ct", title="Screening CT (curated)", tags=["lung", "curated"], actor="admin:root"
    )
    ingest(title="Provider title again", content_hash="e" * 64)
    d = catalog.get_dataset("lung-ct")
    assert d.title == "Screening CT (curated)"
    assert d.tags == ["lung", "curated"]
    assert d.description == "Low-dose chest CT from the screening programme"
    assert [v.version for v in d.versions] == [1, 2]
    assert names(catalog.search("curated")) == ["lung-ct"]
    with pytest.raises(InvalidInput, match="nothing to change"):
        catalog.edit("lung-ct", actor="admin:root")
    with pytest.raises(UnknownDataset):
        catalog.edit("nope", title="x", actor="admin:root")


def test_search_words_modality_and_visibility(catalog, ingest):
    ingest()
    ingest(
        "brain-mr",
        title="Glioma MRI",
        description="Pre-operative brain MR",
        modality="MR",
        tags=("brain",),
        body_part="HEAD",
    )
    ingest(
        "chest-xr",
        title="Chest radiographs 100%",
        description="Frontal CXR",
        modality="DX",
        tags=("chest",),
    )
    assert names(catalog.search("brain")) == ["brain-mr"]
    assert names(catalog.search("CHEST", modality="DX")) == ["chest-xr"]
    assert names(catalog.search("chest")) == ["chest-xr", "lung-ct"]  # title hit ranks first
    assert names(catalog.search("lung screening")) == ["lung-ct"]
    assert names(catalog.search("lung brain")) == []
    assert names(catalog.search("", modality="mr")) == ["brain-mr"]
    assert names(catalog.search("100%")) == ["chest-xr"]
    assert names(catalog.search("_")) == []  # LIKE wildcards are literal
    assert names(catalog.search("nodule")) == ["brain-mr", "chest-xr", "lung-ct"]  # labels
    with pytest.raises(InvalidInput, match="bad modality"):
        catalog.search("x", modality="C T")
    # Researchers find only what is granted to them.
    assert catalog.search("brain", principal=ALICE) == []
    catalog.publish("brain-mr", 1, actor="admin:root")
    catalog.grant("brain-mr", 1, user="alice", actor="admin:root")
    assert names(catalog.search("", principal=ALICE)) == ["brain-mr"]
    assert names(catalog.search("brain", modality="MR", principal=ALICE)) == ["brain-mr"]
    assert catalog.search("brain", modality="CT", principal=ALICE) == []
    assert catalog.search("brain", principal=PROVIDER) == []
