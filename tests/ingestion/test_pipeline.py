"""The streaming worker's plumbing: where plaintext is staged, and bounded memory."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import secret_sharing.unpacking as unpacking
from ingestion import store
from ingestion.client import send_shares
from ingestion.pipeline import ByteBudget
from ingestion.settings import IngestPaths, WorkerSettings
from ingestion.worker import ReconstructionWorker, fits_in_memory
from tests.ingestion.conftest import no_plaintext_left, source_files

SHM = Path("/dev/shm")
needs_tmpfs = pytest.mark.skipif(
    not fits_in_memory(SHM, 1, 1.0), reason="/dev/shm is not a tmpfs here"
)


@pytest.fixture
def staging_choices(monkeypatch) -> list[Path]:
    """The staging folder the worker picks for each transfer, in order."""
    chosen: list[Path] = []
    original = ReconstructionWorker._staging_for

    def spy(self, tid, found):
        chosen.append(original(self, tid, found))
        return chosen[-1]

    monkeypatch.setattr(ReconstructionWorker, "_staging_for", spy)
    return chosen


@needs_tmpfs
def test_only_a_tmpfs_with_room_to_spare_is_used_for_staging(tmp_path):
    assert fits_in_memory(SHM, 1024 * 1024, 0.25)
    assert not fits_in_memory(SHM, 1024 * 1024, 0.0)  # turned off
    assert not fits_in_memory(SHM, 10**15, 0.25)  # more than memory
    assert not fits_in_memory(tmp_path, 1, 0.25)  # a folder on the disk is no tmpfs


def test_the_encryption_backlog_blocks_the_unpacker_until_bytes_are_released():
    budget = ByteBudget(100)
    assert budget.acquire(60) == 60
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(budget.acquire(50)))
    waiter.start()
    time.sleep(0.1)
    assert got == [] and budget.used == 60  # 60 + 50 > 100: waits
    budget.release(60)
    waiter.join(timeout=5)
    assert got == [50] and budget.used == 50
    budget.release(50)
    assert budget.acquire(10**9) == 100  # a file larger than the budget takes all of it
    budget.release(100)
    assert budget.used == 0


def test_a_transfer_staged_on_disk_with_files_read_back_from_staging_catalogs_identically(
    enclave,
    provider,
    make_service,
    sample_dataset,
    split,
    tmp_path,
    monkeypatch,
    staging_choices,
):
    """The path for datasets too large for memory: staging under STATE/staging, and files
    over the in-memory limit encrypted from their staged copy instead of from memory."""
    monkeypatch.setattr(unpacking, "IN_MEMORY_LIMIT", 1024)  # DICOM slices are larger
    service = make_service(worker_settings=WorkerSettings(memory_staging_fraction=0))
    shares = split(sample_dataset, provider)
    send_shares(shares.share_paths, [service.coordinator_url], provider.token)
    transfer = enclave.wait_for_state(shares.transfer_id, ("cataloged", "quarantined", "failed"))
    assert transfer.state == "cataloged", transfer.reason
    paths = IngestPaths(enclave.state_dir)
    assert staging_choices and all(p.parent == paths.staging for p in staging_choices)
    out = store.materialize(transfer.version, tmp_path / "out", enclave.master_key)
    stored = {p: data for p, data in source_files(out).items() if not p.startswith("derived/")}
    assert stored == source_files(sample_dataset)
    assert no_plaintext_left(paths)


@needs_tmpfs
def test_a_small_transfer_is_staged_on_tmpfs_and_leaves_nothing_there(
    enclave, provider, service, sample_dataset, split, staging_choices
):
    shares = split(sample_dataset, provider)
    send_shares(shares.share_paths, [service.coordinator_url], provider.token)
    transfer = enclave.wait_for_state(shares.transfer_id, ("cataloged", "quarantined", "failed"))
    assert transfer.state == "cataloged", transfer.reason
    paths = IngestPaths(enclave.state_dir)
    assert staging_choices and all(p.parent == paths.memory_staging for p in staging_choices)
    assert not paths.memory_staging.exists()  # not even an empty folder stays on the tmpfs
