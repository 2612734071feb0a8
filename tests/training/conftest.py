"""Fixtures for training in the enclave: granted dataset versions mounted the way the hub
mounts them (validated, encrypted into a store, materialized), and a user's outputs folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave.samples import make_sample_dataset

SUBJECTS = 4
SLICES = 24
SIZE = 64


@dataclass(frozen=True)
class GrantedMounts:
    """``~/datasets`` of a researcher granted demo-ct v1 (with radiomics) and v2."""

    root: Path
    v1: Path
    v2: Path
    v1_content_hash: str  # as ingestion computed it
    v2_content_hash: str
    source_v1: Path  # the provider's folder, for comparisons


@pytest.fixture(scope="session")
def granted_mounts(tmp_path_factory: pytest.TempPathFactory) -> GrantedMounts:
    from enclave.data.staging import stage_dataset

    base = tmp_path_factory.mktemp("enclave-training")
    root = base / "datasets"
    source1 = make_sample_dataset(
        base / "provider-v1", subjects=SUBJECTS, slices=SLICES, size=SIZE, seed=0
    )
    v1 = stage_dataset(source1, root, version=1, store_root=base / "store")
    source2 = make_sample_dataset(
        base / "provider-v2", subjects=3, slices=16, size=48, seed=1, with_segmentation=False
    )
    v2 = stage_dataset(source2, root, version=2, store_root=base / "store", version_info=False)
    return GrantedMounts(root, v1.path, v2.path, v1.content_hash, v2.content_hash, source1)


@pytest.fixture
def researcher_env(
    granted_mounts: GrantedMounts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A user server's environment: the granted mounts and an empty ``~/outputs``."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    monkeypatch.setenv("ENCLAVE_DATASETS_DIR", str(granted_mounts.root))
    monkeypatch.setenv("ENCLAVE_OUTPUTS_DIR", str(outputs))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    return outputs


@pytest.fixture
def demo_ct(researcher_env: Path):
    import enclave.data as ed

    return ed.open_dataset("demo-ct", 1)
