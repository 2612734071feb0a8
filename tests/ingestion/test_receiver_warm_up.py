"""A receiver warms up before its first upload without recording anything or failing."""

from __future__ import annotations

import pytest

from ingestion.receiver import ReceiverConfig, create_receiver_app, warm_up_receiver


@pytest.fixture
def receiver_app(enclave, tmp_path):
    config = ReceiverConfig(1, tmp_path / "receiver-1", "unused://", "worker-secret")
    return create_receiver_app(config, catalog=enclave.catalog)


def test_warming_up_runs_the_upload_lookups_and_records_nothing(receiver_app, enclave):
    before = [event.id for event in enclave.catalog.audit_events(limit=1000)]
    warm_up_receiver(receiver_app)
    assert [event.id for event in enclave.catalog.audit_events(limit=1000)] == before


def test_a_receiver_whose_catalog_fails_still_warms_up_without_raising(receiver_app):
    class BrokenCatalog:
        def authenticate_provider(self, token):
            raise RuntimeError("the catalog's database is away")

    receiver_app.state.catalog = BrokenCatalog()
    warm_up_receiver(receiver_app)
