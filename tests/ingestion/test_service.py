"""The ingestion service over real HTTP: upload, resume, refusals, reconstruction, catalog."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from ingestion import store
from ingestion.client import UploadError, send_shares, transfer_status
from ingestion.settings import IngestPaths
from tests.ingestion.conftest import flip_byte, no_plaintext_left, source_files


def _receiver(service, index: int) -> str:
    return service.receiver_urls[index - 1]


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _eventually(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def assert_cataloged_without(enclave, transfer_id: str, rejected_share: str) -> None:
    """Cataloged from the other shares; the report names the share that was dropped."""
    transfer = enclave.catalog.get_transfer(transfer_id)
    assert transfer.state == "cataloged", transfer.reason
    report = enclave.catalog.get_version("demo-ct", 1).report
    assert rejected_share in report["summary"]["shares"]["rejected"]


def _versions(enclave, name: str) -> list:
    return enclave.catalog.get_dataset(name).versions


# --- the whole path ----------------------------------------------------------------------


def test_sample_dataset_is_cataloged_and_materializes_identically(
    enclave, provider, service, sample_dataset, split, tmp_path
):
    shares = split(sample_dataset, provider)
    result = send_shares(shares.share_paths, [service.coordinator_url], provider.token)
    # On demand: the first k are sent, the spares only if the enclave found one corrupt.
    assert {u.index: u.outcome for u in result.uploads} == {
        1: "sent",
        2: "sent",
        3: "sent",
        4: "not-needed",
        5: "not-needed",
    }
    assert result.state in ("validating", "cataloged")
    transfer = enclave.wait_for_state(shares.transfer_id, ("cataloged", "quarantined", "failed"))
    assert transfer.state == "cataloged", transfer.reason

    version = transfer.version
    assert version.status == "pending-review"
    provided = source_files(sample_dataset)
    assert len([p for p in provided if p.endswith(".dcm")]) == 12
    assert version.series_count == 2

    out = store.materialize(version, tmp_path / "materialized", enclave.master_key)
    stored = source_files(out)
    derived = {p: data for p, data in stored.items() if p.startswith("derived/")}
    assert {p: data for p, data in stored.items() if p not in derived} == provided
    assert version.file_count == len(provided) + len(derived)

    # Status as the provider sees it.
    status = transfer_status(shares.transfer_id, [service.coordinator_url], provider.token)
    assert status["state"] == "cataloged"
    assert status["version"]["dataset"] == "demo-ct" and status["version"]["version"] == 1

    # No plaintext or shares left behind.
    paths = IngestPaths(enclave.state_dir)
    assert no_plaintext_left(paths)
    _eventually(
        lambda: (
            not any((paths.receiver_store(j) / shares.transfer_id).exists() for j in range(1, 6))
        )
    )


def test_duplicate_send_is_harmless(enclave, provider, service, sample_dataset, split):
    shares = split(sample_dataset, provider)
    send_shares(shares.share_paths, [service.coordinator_url], provider.token)
    enclave.wait_for_state(shares.transfer_id, ("cataloged",))
    again = send_shares(shares.share_paths, [service.coordinator_url], provider.token)
    assert {u.outcome for u in again.uploads if u.index <= 3} == {"already-cataloged"}
    assert {u.outcome for u in again.uploads if u.index > 3} == {"not-needed"}
    assert again.state == "cataloged"
    assert sum(u.sent_bytes for u in again.uploads) == 0
    assert len(_versions(enclave, "demo-ct")) == 1


def test_interrupted_upload_resumes_at_receiver_offset(
    enclave, provider, service, sample_dataset, split
):
    shares = split(sample_dataset, provider)
    first = shares.share_paths[0]
    length = first.stat().st_size

    class ConnectionLost(Exception):
        pass

    def cut(index: int, done: int, total: int) -> None:
        if done >= length // 2 and done < total:
            raise ConnectionLost

    with pytest.raises(ConnectionLost):
        send_shares(
            [first], [service.coordinator_url], provider.token, progress=cut, chunk_bytes=8192
        )
    progress = httpx.get(
        f"{_receiver(service, 1)}/v1/transfers/{shares.transfer_id}/shares/1",
        headers=_auth(provider.token),
    ).json()
    assert 0 < progress["received"] < length and not progress["complete"]

    result = send_shares(
        shares.share_paths, [service.coordinator_url], provider.token, chunk_bytes=8192
    )
    resumed = next(u for u in result.uploads if u.index == 1)
    assert resumed.resumed_from == progress["received"]
    assert resumed.sent_bytes == length - progress["received"]
    assert enclave.wait_for_state(shares.transfer_id, ("cataloged",)).state == "cataloged"


# --- who may upload ----------------------------------------------------------------------


# --- bad bodies --------------------------------------------------------------------------


# --- damaged shares ----------------------------------------------------------------------


def test_share_corrupted_in_transit_is_rejected_and_a_spare_used(
    enclave, provider, service, sample_dataset, split
):
    shares = split(sample_dataset, provider)
    flip_byte(shares.share_paths[1], 64 + 10)  # a data block of share 2
    with pytest.raises(UploadError, match="share 2.*rejected"):
        send_shares(shares.share_paths, [service.coordinator_url], provider.token)
    transfer = enclave.wait_for_state(shares.transfer_id, ("cataloged", "failed", "quarantined"))
    assert transfer.state == "cataloged", transfer.reason


def test_share_corrupted_at_rest_is_skipped_for_a_spare(
    enclave, provider, make_service, sample_dataset, split
):
    service = make_service(run_worker=False)
    shares = split(sample_dataset, provider)
    send_shares(shares.share_paths, [service.coordinator_url], provider.token, spares="all")
    stored = IngestPaths(enclave.state_dir).receiver_store(1) / shares.transfer_id / "share-1"
    flip_byte(stored, 64 + 10)
    worker = _worker(enclave, service)
    worker.recover()
    assert worker.run_once() == [shares.transfer_id]
    assert_cataloged_without(enclave, shares.transfer_id, "share-1")


def test_the_first_k_shares_go_before_the_spares_and_late_spares_are_not_needed(
    enclave, provider, make_service, sample_dataset, split
):
    service = make_service(run_worker=False)
    shares = split(sample_dataset, provider)
    events: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def record(index: int, done: int, length: int) -> None:
        with lock:
            events.append((index, done, length))

    send_shares(
        shares.share_paths, [service.coordinator_url], provider.token, progress=record, spares="all"
    )
    k = 3
    last_primary = max(
        i for i, (index, done, length) in enumerate(events) if index <= k and done == length
    )
    first_spare = min(i for i, (index, _, _) in enumerate(events) if index > k)
    assert last_primary < first_spare, events

    # A transfer cataloged from its primaries needs no spares: receivers refuse them.
    again = split(sample_dataset, provider)
    send_shares(again.share_paths[:k], [service.coordinator_url], provider.token)
    worker = _worker(enclave, service)
    worker.recover()
    worker.run_once()
    assert enclave.catalog.get_transfer(again.transfer_id).state == "cataloged"
    late = send_shares(again.share_paths, [service.coordinator_url], provider.token, spares="all")
    assert {u.index: u.outcome for u in late.uploads if u.index > k} == {
        4: "already-cataloged",
        5: "already-cataloged",
    }
    assert all(u.sent_bytes == 0 for u in late.uploads)


def test_spares_go_on_demand_when_the_enclave_finds_a_primary_corrupt(
    enclave, provider, make_service, sample_dataset, split
):
    """The default client waits after the first k; a primary corrupted at rest sends the
    transfer back to `receiving` with a reason, and the waiting client then sends spares."""
    service = make_service(run_worker=False)
    shares = split(sample_dataset, provider)
    paths = IngestPaths(enclave.state_dir)
    outcome: dict = {}

    def send() -> None:
        try:
            outcome["result"] = send_shares(
                shares.share_paths,
                [service.coordinator_url],
                provider.token,
                poll_interval=0.05,
                pickup_timeout=60,
            )
        except Exception as exc:  # surfaced below
            outcome["error"] = exc

    client = threading.Thread(target=send)
    client.start()
    stored = [paths.receiver_store(j) / shares.transfer_id / f"share-{j}" for j in (1, 2, 3)]
    _eventually(lambda: all(p.exists() for p in stored))
    assert not (paths.receiver_store(4) / shares.transfer_id).exists()  # spares held back
    flip_byte(stored[0], 64 + 10)
    worker = _worker(enclave, service)
    worker.recover()
    worker.run_once()  # share-1 fails its segment check: back to receiving, asking for more
    assert enclave.catalog.get_transfer(shares.transfer_id).state == "receiving"
    client.join(timeout=60)
    assert not client.is_alive() and "error" not in outcome, outcome
    result = outcome["result"]
    assert {u.index: u.outcome for u in result.uploads if u.index > 3} == {4: "sent", 5: "sent"}
    assert worker.run_once() == [shares.transfer_id]
    assert_cataloged_without(enclave, shares.transfer_id, "share-1")


def test_spares_go_anyway_when_the_enclave_does_not_start_on_the_transfer(
    enclave, provider, make_service, sample_dataset, split
):
    service = make_service(run_worker=False)  # an enclave busy elsewhere, in effect
    shares = split(sample_dataset, provider)
    started = time.monotonic()
    result = send_shares(
        shares.share_paths,
        [service.coordinator_url],
        provider.token,
        pickup_timeout=0.5,
        poll_interval=0.05,
    )
    assert time.monotonic() - started >= 0.5
    assert {u.outcome for u in result.uploads} == {"sent"}
    assert result.state == "receiving"


def test_status_without_share_progress_asks_no_receiver(
    enclave, provider, service, sample_dataset, split
):
    """What a waiting client polls: the state alone, without a request to every receiver."""
    shares = split(sample_dataset, provider)
    send_shares(shares.share_paths, [service.coordinator_url], provider.token)
    enclave.wait_for_state(shares.transfer_id, ("cataloged",))
    where = f"{service.coordinator_url}/v1/transfers/{shares.transfer_id}"
    brief = httpx.get(where, params={"shares": "false"}, headers=_auth(provider.token)).json()
    assert brief["state"] == "cataloged" and "shares" not in brief
    full = httpx.get(where, headers=_auth(provider.token)).json()
    assert full["state"] == "cataloged" and isinstance(full["shares"], list)


def test_an_unknown_spare_policy_is_refused(provider, service, sample_dataset, split):
    shares = split(sample_dataset, provider)
    with pytest.raises(UploadError, match="unknown spare policy 'some'"):
        send_shares(shares.share_paths, [service.coordinator_url], provider.token, spares="some")


def test_too_few_good_shares_waits_for_the_spares_then_catalogs(
    enclave, provider, make_service, sample_dataset, split
):
    service = make_service(run_worker=False)
    shares = split(sample_dataset, provider)
    send_shares(shares.share_paths[:3], [service.coordinator_url], provider.token)
    stored = IngestPaths(enclave.state_dir).receiver_store(2) / shares.transfer_id / "share-2"
    flip_byte(stored, 64 + 10)
    worker = _worker(enclave, service)
    worker.recover()
    worker.run_once()
    transfer = enclave.catalog.get_transfer(shares.transfer_id)
    assert transfer.state == "receiving"  # shares 4 and 5 may still come
    assert "share-2" in transfer.reason and "segment" in transfer.reason
    assert transfer.version is None
    assert worker.run_once() == []  # nothing new arrived: no second attempt
    assert no_plaintext_left(IngestPaths(enclave.state_dir))
    send_shares(shares.share_paths[3:4], [service.coordinator_url], provider.token)
    assert worker.run_once() == [shares.transfer_id]
    assert_cataloged_without(enclave, shares.transfer_id, "share-2")


def test_too_few_good_shares_of_all_n_fails_the_transfer_with_a_reason(
    enclave, provider, make_service, sample_dataset, split
):
    service = make_service(run_worker=False)
    shares = split(sample_dataset, provider)
    send_shares(shares.share_paths, [service.coordinator_url], provider.token, spares="all")
    for index in (1, 2, 4):
        stored = IngestPaths(enclave.state_dir).receiver_store(index) / shares.transfer_id
        flip_byte(stored / f"share-{index}", 64 + 10)
    worker = _worker(enclave, service)
    worker.recover()
    worker.run_once()
    transfer = enclave.catalog.get_transfer(shares.transfer_id)
    assert transfer.state == "failed", transfer.reason
    assert "share-2" in transfer.reason and "segment" in transfer.reason
    assert transfer.version is None
    assert [
        p for p in IngestPaths(enclave.state_dir).store.iterdir() if not p.name.startswith(".")
    ] == []


def _worker(enclave, service):
    from ingestion.worker import ReceiverLink, ReconstructionWorker

    return ReconstructionWorker(
        paths=IngestPaths(enclave.state_dir),
        catalog=enclave.catalog,
        master_key=enclave.master_key,
        receivers=[ReceiverLink(u, service.worker_token) for u in service.receiver_urls],
        local_shares=False,  # fetch over HTTP, as from receivers on other hosts
    )


# --- validation outcomes -----------------------------------------------------------------


def test_phi_in_a_dicom_header_quarantines_with_a_report_naming_the_tag(
    enclave, provider, service, split, tmp_path
):
    from enclave.samples import make_sample_dataset
    from tests.phi import PHI_VALUES, planting

    dataset = make_sample_dataset(
        tmp_path / "phi",
        name="phi-ct",
        subjects=1,
        slices=4,
        size=32,
        edit_header=planting("patient-name"),
    )
    shares = split(dataset, provider)
    send_shares(shares.share_paths, [service.coordinator_url], provider.token)
    transfer = enclave.wait_for_state(shares.transfer_id, ("cataloged", "quarantined", "failed"))
    assert transfer.state == "quarantined"
    qdir = IngestPaths(enclave.state_dir).quarantine / shares.transfer_id
    report_json = (qdir / "report.json").read_text()
    assert (qdir / "report.html").is_file()
    assert "PatientName" in report_json or "(0010,0010)" in report_json
    value = PHI_VALUES["patient-name"]
    for text in (report_json, (qdir / "report.html").read_text(), transfer.reason):
        assert str(value) not in text and str(value).split("^")[0] not in text
    # Quarantined data is deleted: no plaintext, no shares, nothing stored.
    paths = IngestPaths(enclave.state_dir)
    assert no_plaintext_left(paths)
    _eventually(
        lambda: (
            not any((paths.receiver_store(j) / shares.transfer_id).exists() for j in range(1, 6))
        )
    )
    assert not any(p for p in paths.store.glob("*") if p.name.startswith(shares.transfer_id))
    status = transfer_status(shares.transfer_id, [service.coordinator_url], provider.token)
    assert status["state"] == "quarantined" and status["reason"]
    report = httpx.get(
        f"{service.coordinator_url}/v1/transfers/{shares.transfer_id}/report",
        headers=_auth(provider.token),
    ).json()
    assert report["passed"] is False


def test_manifest_that_is_not_yaml_quarantines(enclave, provider, service, split, tmp_path):
    from enclave.samples import make_sample_dataset

    dataset = make_sample_dataset(tmp_path / "bad", name="bad-yaml", subjects=1, slices=4, size=32)
    (dataset / "dataset.yaml").write_text("name: [unclosed\n  title: {{{\n")
    shares = split(dataset, provider)
    send_shares(shares.share_paths, [service.coordinator_url], provider.token)
    transfer = enclave.wait_for_state(shares.transfer_id, ("cataloged", "quarantined", "failed"))
    assert transfer.state == "quarantined"
    assert (
        "dataset.yaml"
        in (
            IngestPaths(enclave.state_dir).quarantine / shares.transfer_id / "report.json"
        ).read_text()
    )


# --- concurrency -------------------------------------------------------------------------


def test_two_concurrent_transfers_are_both_cataloged(enclave, provider, service, split, tmp_path):
    from enclave.samples import make_sample_dataset

    datasets = [
        make_sample_dataset(
            tmp_path / f"c{i}", name=f"concurrent-{i}", subjects=1, slices=4, size=32, seed=i
        )
        for i in range(2)
    ]
    splits = [split(d, provider) for d in datasets]
    errors = []

    def send(s) -> None:
        try:
            send_shares(s.share_paths, [service.coordinator_url], provider.token, chunk_bytes=4096)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(s,)) for s in splits]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, s in enumerate(splits):
        transfer = enclave.wait_for_state(s.transfer_id, ("cataloged", "failed", "quarantined"))
        assert transfer.state == "cataloged", transfer.reason
        assert len(_versions(enclave, f"concurrent-{i}")) == 1


def test_a_version_stored_but_never_cataloged_is_removed_when_the_worker_restarts(
    enclave, provider, make_service, sample_dataset, split, monkeypatch
):
    """A crash between the store's rename and the catalog commit leaves an encrypted folder
    whose key died with the process; the next start clears it and the retry catalogs."""
    service = make_service(run_worker=False)
    shares = split(sample_dataset, provider)
    send_shares(shares.share_paths, [service.coordinator_url], provider.token, spares="all")
    store_root = IngestPaths(enclave.state_dir).store

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the catalog commit")

    with monkeypatch.context() as patch:
        patch.setattr(enclave.catalog, "catalog_version", crash)
        patch.setattr(store, "delete_version", lambda location: None)  # a kill runs no cleanup
        worker = _worker(enclave, service)
        worker.recover()
        with pytest.raises(KeyboardInterrupt):
            worker.run_once()
    orphans = [p for p in store_root.iterdir() if not p.name.startswith(".")]
    assert len(orphans) == 1 and (orphans[0] / "store.json").is_file()
    assert enclave.catalog.get_transfer(shares.transfer_id).state == "validating"

    restarted = _worker(enclave, service)
    assert restarted.recover() == [shares.transfer_id]
    assert not orphans[0].exists()
    assert restarted.run_once() == [shares.transfer_id]
    version = enclave.catalog.get_transfer(shares.transfer_id).version
    assert [p for p in store_root.iterdir() if not p.name.startswith(".")] == [
        Path(version.store_location)
    ]
    # Restarting again keeps what the catalog points to.
    _worker(enclave, service).recover()
    assert Path(version.store_location).is_dir()
