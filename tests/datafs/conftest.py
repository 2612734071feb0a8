"""Fixtures of the decrypting-mount tests: a stored version and a mounter (root, /dev/fuse)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave.custody import MasterKey
from enclave.workspace.datasets import VersionRecord
from ingestion import store


@pytest.fixture(autouse=True, params=["python", "native"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every mount test runs with both filesystems (``enclave.datafs.nativefs``). The native
    one must be built (``enclave/datafs/native/build.sh``; ``make`` builds it): a missing
    binary fails the test rather than skipping it."""
    from enclave.datafs.nativefs import BUILD_SCRIPT, IMPLEMENTATION_ENV, native_binary

    if request.param == "native" and native_binary() is None:
        pytest.fail(f"the native datafs binary is not built (run {BUILD_SCRIPT})", pytrace=False)
    monkeypatch.setenv(IMPLEMENTATION_ENV, request.param)
    return str(request.param)


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        # Mounts are tested for real or not at all; `make test` runs as root.
        pytest.fail("decrypting-mount tests need root and /dev/fuse", pytrace=False)


Version = VersionRecord  # the fields of a catalog version the mounter reads


@dataclass
class Stored:
    source: Path
    version: Version
    master_key: MasterKey
    hashes: dict[str, str]


@pytest.fixture
def stored(tmp_path: Path) -> Stored:
    src = tmp_path / "src"
    (src / "dicom" / "series-1").mkdir(parents=True)
    (src / "dicom" / "series-1" / "a.dcm").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "dicom" / "series-1" / "b.dcm").write_bytes(os.urandom(65536))
    (src / "tables").mkdir()
    (src / "tables" / "clinical.csv").write_text("subject,age\ns1,40\n")
    (src / "empty.txt").write_bytes(b"")
    key = MasterKey(os.urandom(32))
    written = store.write_version(src, tmp_path / "store", key, name_hint="demo")
    hashes = {
        p.relative_to(src).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in src.rglob("*")
        if p.is_file()
    }
    version = Version("demo", 1, written.store_location, written.wrapped_key, "c" * 64)
    return Stored(src, version, key, hashes)
