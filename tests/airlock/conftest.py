"""Airlock fixtures: a catalog holding one real dataset version with its content index."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog, default_database_url, open_catalog
from ingestion.content_index import identifier_digests, iter_chunk_digests
from secret_sharing.fileio import sha256_file

PEM = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAtest\n-----END PUBLIC KEY-----\n"
SUBJECT = "SUBJ-0001"


@dataclass
class IndexedDataset:
    catalog: Catalog
    root: Path  # the dataset's files as the provider sent them
    dicom: list[Path]
    subject: str
    version: Any


def catalog_folder(catalog: Catalog, root: Path, name: str, subjects: list[str]) -> Any:
    """Catalog every file under ``root`` as ingestion would, content index included."""
    transfer_id = f"t-{name}"
    provider = catalog.add_provider(f"{name}-hospital", PEM, f"SHA256:{name}", actor="test")[0]
    catalog.record_transfer(transfer_id, provider, dataset_name=name, k=2, n=3, share_length=1)
    files: list[dict[str, Any]] = []
    chunks: dict[str, list[bytes]] = {}
    for path in sorted([p for p in root.rglob("*") if p.is_file()]):
        rel = path.relative_to(root).as_posix()
        kind = "dicom" if path.suffix == ".dcm" else "other"
        files.append(
            {"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path), "kind": kind}
        )
        chunks[rel] = [digest for _, digest in iter_chunk_digests(path)]
    return catalog.catalog_version(
        transfer_id,
        manifest={"name": name},
        content_hash=hashlib.sha256(name.encode()).hexdigest(),
        size_bytes=sum(int(f["size"]) for f in files),
        store_location=f"store/{name}",
        wrapped_key=b"wrapped",
        files=files,
        chunks=chunks,
        identifiers=identifier_digests(subjects),
        actor="test",
    )


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IndexedDataset]:
    """``lung-ct`` v1: one CT series of 256 x 256 slices (whole 64 KiB chunks) of SUBJ-0001."""
    from enclave.samples import make_ct_series

    base = tmp_path_factory.mktemp("airlock-data")
    root = base / "lung-ct"
    dicom = make_ct_series(root / "dicom" / SUBJECT, slices=2, size=256, subject_id=SUBJECT)
    catalog = open_catalog(default_database_url(base))
    version = catalog_folder(catalog, root, "lung-ct", [SUBJECT])
    yield IndexedDataset(catalog, root, dicom, SUBJECT, version)
    catalog.close()
