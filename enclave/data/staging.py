"""Put a dataset folder where a user server would find it, the way the hub does.

Ingestion validates the folder (which computes ``derived/radiomics.parquet``) and encrypts it
into the store; the hub materializes the stored version and mounts it at
``DATASETS/NAME/VERSION`` with ``.enclave-version.json``. This module runs that same path
without a hub, catalog or mounts, for tests, benchmarks and trying notebooks on a laptop
(``ENCLAVE_DATASETS_DIR=...``).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from enclave.data.mounts import DatasetAccessError, write_version_info


@dataclass(frozen=True)
class StagedVersion:
    name: str
    version: int
    path: Path
    content_hash: str
    store_location: Path


def stage_dataset(
    source: Path,
    datasets_root: Path,
    *,
    version: int = 1,
    store_root: Path | None = None,
    master_key: Any = None,
    validate: bool = True,
    version_info: bool = True,
) -> StagedVersion:
    """Validate ``source`` (unless ``validate=False``), encrypt it into a store, and materialize
    it at ``datasets_root/NAME/VERSION``."""
    from enclave.custody import MasterKey
    from ingestion.manifest import load_manifest
    from ingestion.store import materialize, write_version
    from ingestion.validate import validate_dataset

    source = Path(source)
    manifest = load_manifest(source)
    if validate:
        outcome = validate_dataset(source)
        if not outcome.passed:
            errors = "; ".join(f.message for f in outcome.report.findings if f.severity == "error")
            raise DatasetAccessError(f"{source} does not pass ingestion: {errors}")
        digest = outcome.content_hash
    else:
        from enclave.data.mounts import compute_content_hash

        digest = compute_content_hash(source)
    key = master_key or MasterKey(secrets.token_bytes(32))
    store = Path(store_root) if store_root else Path(tempfile.mkdtemp(prefix="enclave-store-"))
    stored = write_version(source, store, key, name_hint=manifest.name)
    dest = Path(datasets_root) / manifest.name / str(version)
    materialize(stored, dest, key)
    if version_info:
        write_version_info(
            dest,
            SimpleNamespace(
                name=manifest.name,
                version=version,
                content_hash=digest,
                manifest=manifest.to_dict(),
            ),
        )
    for dirpath, _, filenames in os.walk(dest):  # mounted read-only in a user server
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o444)
    return StagedVersion(manifest.name, version, dest, digest, Path(stored.store_location))
