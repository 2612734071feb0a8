"""The airlock's content index is filled at ingestion, from the bytes as they are encrypted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import secret_sharing.unpacking as unpacking
from catalog.airlock import ContentIndex
from ingestion.client import send_shares
from ingestion.content_index import (
    CHUNK_BYTES,
    ChunkHasher,
    identifier_digest,
    iter_chunk_digests,
)
from ingestion.settings import WorkerSettings


def test_the_hasher_finds_the_same_chunks_whatever_pieces_the_bytes_come_in():
    data = os.urandom(5 * CHUNK_BYTES + 1234)
    whole = ChunkHasher()
    whole.update(data)
    pieces = ChunkHasher()
    cut = [0, 1, 100, CHUNK_BYTES - 1, CHUNK_BYTES + 7, 3 * CHUNK_BYTES, len(data)]
    for start, end in zip(cut, cut[1:], strict=False):
        pieces.update(memoryview(data)[start:end])
    assert len(whole.digests) == 5  # the 1234-byte tail is not a whole chunk
    assert pieces.digests == whole.digests


def test_chunks_of_zeros_or_padding_are_not_indexed(tmp_path):
    path = tmp_path / "mixed.bin"
    path.write_bytes(bytes(CHUNK_BYTES) + b"\xff" * CHUNK_BYTES + os.urandom(CHUNK_BYTES))
    found = list(iter_chunk_digests(path))
    assert [offset for offset, _ in found] == [2 * CHUNK_BYTES]


def test_identifier_digests_ignore_case_and_surrounding_space():
    assert identifier_digest(" subj-0001 ") == identifier_digest("SUBJ-0001")
    assert identifier_digest("SUBJ-0001") != identifier_digest("SUBJ-0002")
    assert len(identifier_digest("x")) == 16


@pytest.mark.parametrize("path", ["in memory", "staged on disk"])
def test_a_cataloged_version_has_its_chunks_and_subject_ids_indexed(
    enclave, provider, make_service, split, tmp_path, monkeypatch, path
):
    from enclave.samples import make_sample_dataset

    if path == "staged on disk":
        monkeypatch.setattr(unpacking, "IN_MEMORY_LIMIT", 1024)
        service = make_service(worker_settings=WorkerSettings(memory_staging_fraction=0))
    else:
        service = make_service()
    # 256 x 256 slices: each DICOM file holds whole 64 KiB chunks of pixel data.
    dataset = make_sample_dataset(tmp_path / "datasets", subjects=2, slices=2, size=256)
    shares = split(dataset, provider)
    send_shares(shares.share_paths, [service.coordinator_url], provider.token)
    transfer = enclave.wait_for_state(shares.transfer_id, ("cataloged", "quarantined", "failed"))
    assert transfer.state == "cataloged", transfer.reason

    index = ContentIndex(enclave.catalog)
    slice_file = sorted(dataset.glob("dicom/*/*/*.dcm"))[0]
    digests = [d for _, d in iter_chunk_digests(slice_file)]
    assert digests, "the sample slice should hold a whole informative chunk"
    found = index.chunks_found(digests)
    rel = slice_file.relative_to(dataset).as_posix()
    assert set(found) == set(digests)
    assert all(where == f"demo-ct v1: {rel}" for where in found.values())
    subject = slice_file.parent.parent.name
    ids = index.identifiers_found([identifier_digest(subject), identifier_digest("nobody-here")])
    assert list(ids.values()) == ["demo-ct v1"]
    assert index.files_with_sha256(_sha256(slice_file)) == [f"demo-ct v1: {rel}"]


def _sha256(path: Path) -> str:
    from secret_sharing.fileio import sha256_file

    return sha256_file(path)
