"""What the ingestion service relies on: providers, transfers and one-transaction cataloging."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from catalog import Conflict, InvalidInput, UnknownProvider, UnknownTransfer
from catalog.models import DEFAULT_PROVIDER_QUOTA_BYTES, File, Series, Study
from tests.catalog.conftest import PEM


def test_providers_register_once_and_authenticate_by_token(catalog, hospital):
    provider, token = hospital
    assert provider.provider_quota_bytes == provider.quota_bytes == DEFAULT_PROVIDER_QUOTA_BYTES
    assert catalog.authenticate_provider(token).name == "st-mary"
    assert catalog.authenticate_provider(token + "x") is None
    assert catalog.authenticate_provider("") is None
    with pytest.raises(Conflict, match="provider 'st-mary' already exists"):
        catalog.add_provider("st-mary", PEM, "SHA256:other", actor="admin:test")
    assert catalog.get_provider("st-mary").verify_key_pem == PEM
    with pytest.raises(UnknownProvider):
        catalog.get_provider("nobody")
    assert catalog.set_provider_quota("st-mary", 10, actor="admin:test").quota_bytes == 10
    new = catalog.rotate_provider_token("st-mary", actor="admin:test")
    assert catalog.authenticate_provider(token) is None
    assert catalog.authenticate_provider(new).name == "st-mary"


def test_the_token_is_stored_only_as_its_hash(catalog, hospital):
    provider, token = hospital
    assert token not in provider.token_hash and len(provider.token_hash) == 64


def test_record_transfer_is_idempotent_per_provider(catalog, hospital):
    provider, _ = hospital
    other, _ = catalog.add_provider("city-hospital", PEM, "SHA256:city", actor="admin:test")
    first = catalog.record_transfer(
        "t-1", provider, dataset_name="lung-ct", k=3, n=5, share_length=10
    )
    again = catalog.record_transfer(
        "t-1", "st-mary", dataset_name="lung-ct", k=3, n=5, share_length=10
    )
    assert first.id == again.id and again.state == "receiving"
    with pytest.raises(Conflict, match="belongs to another provider"):
        catalog.record_transfer("t-1", other, dataset_name="lung-ct", k=3, n=5, share_length=10)
    with pytest.raises(Conflict, match="was recorded as lung-ct 3-of-5"):
        catalog.record_transfer("t-1", provider, dataset_name="lung-ct", k=2, n=5, share_length=10)
    with pytest.raises(InvalidInput, match="1 <= k <= n"):
        catalog.record_transfer("t-2", provider, dataset_name="lung-ct", k=4, n=3, share_length=10)
    with pytest.raises(InvalidInput, match="bad transfer id"):
        catalog.record_transfer(
            "../etc", provider, dataset_name="lung-ct", k=1, n=1, share_length=10
        )
    assert [t.transfer_id for t in catalog.transfers_for_provider(provider)] == ["t-1"]
    assert catalog.transfers_for_provider(other) == []


def test_transfer_states(catalog, hospital):
    provider, _ = hospital
    catalog.record_transfer("t-1", provider, dataset_name="lung-ct", k=3, n=5, share_length=10)
    catalog.set_transfer_state("t-1", "reconstructing", actor="ingestion:worker")
    assert [t.transfer_id for t in catalog.transfers_in_state("reconstructing")] == ["t-1"]
    t = catalog.set_transfer_state(
        "t-1",
        "quarantined",
        reason="2 errors: deid.private-tag",
        report_json="{}",
        actor="ingestion:worker",
    )
    assert (t.state, t.reason, t.provider.name) == (
        "quarantined",
        "2 errors: deid.private-tag",
        "st-mary",
    )
    with pytest.raises(InvalidInput, match="unknown transfer state 'done'"):
        catalog.set_transfer_state("t-1", "done", actor="x")
    with pytest.raises(UnknownTransfer):
        catalog.set_transfer_state("t-9", "failed", actor="x")
    with pytest.raises(Conflict, match="use catalog_version"):
        catalog.set_transfer_state("t-1", "cataloged", actor="x")
    with pytest.raises(UnknownTransfer):
        catalog.get_transfer("t-9")


def test_catalog_version_records_content_in_one_go(catalog, ingest):
    version = ingest(transfer_id="t-1")
    assert (version.dataset.name, version.version, version.status) == (
        "lung-ct",
        1,
        "pending-review",
    )
    assert (version.file_count, version.series_count, version.study_count) == (8, 2, 1)
    assert version.modality_list == ["CT"]
    assert version.report.passed and version.report.warning_count == 1
    transfer = catalog.get_transfer("t-1")
    assert transfer.state == "cataloged" and transfer.version.version == 1
    detail = catalog.get_version("lung-ct", 1)
    assert [s.file_count for s in detail.series] == [4, 3]
    assert detail.series[0].spacing == [0.7, 0.7, 2.5]
    assert detail.series[0].study_uid == "1.2.3"
    assert detail.feature_tables[0].columns == 3
    assert detail.transfer_ids == ["t-1"]
    with catalog._tx() as s:
        assert s.scalar(select(func.count()).select_from(File)) == 8
        study = s.scalars(select(Study)).one()
        assert (study.series_count, study.file_count) == (2, 7)
        assert s.scalar(select(func.count()).select_from(Series)) == 2


def test_catalog_version_is_idempotent_for_a_retried_transfer(catalog, ingest):
    first = ingest(transfer_id="t-1")
    again = catalog.catalog_version(
        "t-1",
        manifest={"name": "lung-ct"},
        content_hash="different",
        size_bytes=1,
        store_location="store/elsewhere",
        wrapped_key=b"k",
        files=[],
        actor="ingestion:worker",
    )
    assert again.id == first.id and again.store_location == first.store_location
    assert [v.version for v in catalog.get_dataset("lung-ct").versions] == [1]
    with catalog._tx() as s:
        assert s.scalar(select(func.count()).select_from(File)) == 8


def test_same_content_is_reported_not_duplicated(catalog, ingest):
    first = ingest(transfer_id="t-1", content_hash="c" * 64)
    second = ingest(transfer_id="t-2", content_hash="c" * 64)
    assert second.id == first.id
    t2 = catalog.get_transfer("t-2")
    assert t2.state == "cataloged" and "same content as lung-ct version 1" in t2.reason
    third = ingest(transfer_id="t-3", content_hash="d" * 64)
    assert third.version == 2
    assert catalog.audit_events(1)[0].action == "version.catalog"
    assert "version.duplicate" in [e.action for e in catalog.audit_events(10)]


def test_cataloging_refuses_what_it_must_not_accept(catalog, ingest, hospital):
    other, _ = catalog.add_provider("city-hospital", PEM, "SHA256:city", actor="admin:test")
    ingest(transfer_id="t-1")
    with pytest.raises(Conflict, match="dataset 'lung-ct' belongs to provider 'st-mary'"):
        ingest(transfer_id="t-2", provider=other)
    catalog.record_transfer("t-3", hospital[0], dataset_name="brain-mr", k=1, n=1, share_length=1)
    catalog.set_transfer_state("t-3", "quarantined", actor="ingestion:worker")
    kwargs = dict(
        content_hash="x", size_bytes=1, store_location="s", wrapped_key=b"k", files=[], actor="w"
    )
    with pytest.raises(Conflict, match="is quarantined"):
        catalog.catalog_version("t-3", manifest={"name": "brain-mr"}, **kwargs)
    catalog.record_transfer("t-4", hospital[0], dataset_name="brain-mr", k=1, n=1, share_length=1)
    with pytest.raises(
        Conflict, match="announced for dataset 'brain-mr' but its manifest names 'lung-ct'"
    ):
        catalog.catalog_version("t-4", manifest={"name": "lung-ct"}, **kwargs)
    with pytest.raises(UnknownTransfer):
        catalog.catalog_version("t-404", manifest={"name": "brain-mr"}, **kwargs)
    bad_file = {"path": "a.dcm", "size": 1, "sha256": "0" * 64, "kind": "video"}
    with pytest.raises(InvalidInput, match="file a.dcm has kind 'video'"):
        catalog.catalog_version(
            "t-4", manifest={"name": "brain-mr"}, **{**kwargs, "files": [bad_file]}
        )
    twice = [{"path": "a.dcm", "size": 1, "sha256": "0" * 64, "kind": "dicom"}] * 2
    with pytest.raises(InvalidInput, match="file a.dcm is listed twice"):
        catalog.catalog_version("t-4", manifest={"name": "brain-mr"}, **{**kwargs, "files": twice})
    with pytest.raises(InvalidInput, match="bad dataset name"):
        catalog.catalog_version("t-4", manifest={"name": "../x"}, **kwargs)
    # Nothing half-done: the failed attempts left no dataset behind.
    assert [d.name for d in catalog.list_datasets()] == ["lung-ct"]
    assert catalog.get_transfer("t-4").state == "receiving"


def test_concurrent_cataloging_of_one_new_dataset_numbers_versions_once(catalog, hospital):
    """Two workers cataloging two transfers of the same new dataset at once: v1 and v2, no error."""
    import threading

    from tests.catalog.conftest import dicom_files

    provider, _ = hospital
    for tid in ("t-a", "t-b"):
        catalog.record_transfer(tid, provider, dataset_name="twin", k=1, n=1, share_length=1)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def work(tid):
        barrier.wait()
        try:
            results.append(
                catalog.catalog_version(
                    tid,
                    manifest={"name": "twin", "title": "Twin"},
                    content_hash=tid,
                    size_bytes=1,
                    store_location=f"store/{tid}",
                    wrapped_key=b"k",
                    files=dicom_files("9." + str(ord(tid[-1])), "9", 50),
                    actor="ingestion:worker",
                ).version
            )
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(tid,)) for tid in ("t-a", "t-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == [1, 2]
    assert [v.version for v in catalog.get_dataset("twin").versions] == [1, 2]


def test_store_locations_name_every_cataloged_version_and_nothing_else(catalog, ingest):
    assert catalog.store_locations() == set()
    first = ingest(transfer_id="t-1")
    assert catalog.store_locations() == {first.store_location}
    catalog.retire("lung-ct", 1, actor="admin:test")  # retired data is still the catalog's
    assert catalog.store_locations() == {first.store_location}
