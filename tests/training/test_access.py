"""Which datasets a notebook can see and open, and what it is told when it cannot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import enclave.data as ed
from enclave.data.mounts import GrantedVersion, compute_content_hash


def test_list_datasets_shows_every_granted_version(researcher_env, granted_mounts):
    granted = ed.list_datasets()
    assert [(g.name, g.version) for g in granted] == [("demo-ct", 1), ("demo-ct", 2)]
    assert granted[0].path == granted_mounts.v1
    assert granted[0].modality == "CT"
    assert granted[0].title == "Demo chest CT (synthetic)"
    assert "demo-ct v1" in repr(granted) and "<table>" in granted._repr_html_()


def test_list_datasets_shows_my_grants_mode_and_expiry(granted_mounts, tmp_path, monkeypatch):
    """The spawner writes each user's grants beside the mounts; the shared trees cannot say."""
    from datetime import UTC, datetime

    from enclave.workspace.datasets import MountedDataset, write_grants_file

    root = tmp_path / "datasets"
    (root / "demo-ct").mkdir(parents=True)
    (root / "demo-ct" / "1").symlink_to(granted_mounts.v1)
    (root / "demo-ct" / "2").symlink_to(granted_mounts.v2)
    ends = datetime(2099, 2, 1, tzinfo=UTC)
    write_grants_file(
        root,
        [
            MountedDataset("demo-ct", 1, root / "demo-ct" / "1", ends, "notebook"),
            MountedDataset("demo-ct", 2, root / "demo-ct" / "2", None, "desktop"),
        ],
    )
    monkeypatch.setenv("ENCLAVE_DATASETS_DIR", str(root))
    v1, v2 = ed.list_datasets()
    assert (v1.mode, v1.expires_at) == ("notebook", "2099-02-01T00:00:00+00:00")
    assert (v2.mode, v2.expires_at) == ("desktop", None)
    assert "notebook" in repr(ed.list_datasets()).splitlines()[0]
    assert "<th>access</th>" in ed.list_datasets()._repr_html_()


def test_open_defaults_to_latest_granted_version(researcher_env):
    assert ed.open_dataset("demo-ct").version == 2
    assert ed.open_dataset("demo-ct", 1).version == 1
    assert ed.open_dataset("demo-ct", "v1").version == 1


def test_version_not_granted_is_named_with_what_is_granted(researcher_env):
    with pytest.raises(ed.DatasetNotGranted) as info:
        ed.open_dataset("demo-ct", 3)
    assert str(info.value) == (
        "dataset 'demo-ct' version 3 is not granted to you; granted: demo-ct v1, demo-ct v2"
    )
    assert isinstance(info.value, ed.DatasetAccessError)


def test_unknown_dataset_is_an_enclave_error(researcher_env):
    from enclave.errors import EnclaveError

    with pytest.raises(ed.DatasetNotFound) as info:
        ed.open_dataset("lung-mr")
    assert isinstance(info.value, EnclaveError)
    assert "'lung-mr' is not granted to you or does not exist" in str(info.value)
    assert "granted: demo-ct v1, demo-ct v2" in str(info.value)


@pytest.mark.parametrize("version", ["latest", "1.5", -1, ""])
def test_malformed_version_is_refused(researcher_env, version):
    with pytest.raises(ed.DatasetAccessError, match="version must be a number"):
        ed.open_dataset("demo-ct", version)


def test_nothing_granted(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCLAVE_DATASETS_DIR", str(tmp_path / "datasets"))
    assert ed.list_datasets() == []
    assert "no datasets are granted" in repr(ed.list_datasets())
    with pytest.raises(ed.DatasetNotFound, match="granted: none"):
        ed.open_dataset("demo-ct")


def test_empty_mount_point_and_stray_folders_are_not_grants(tmp_path, monkeypatch, granted_mounts):
    root = tmp_path / "datasets"
    (root / "demo-ct" / "1").mkdir(parents=True)  # a mount point whose mount failed
    (root / "demo-ct" / "notes").mkdir()
    (root / ".cache").mkdir()
    monkeypatch.setenv("ENCLAVE_DATASETS_DIR", str(root))
    assert ed.list_datasets() == []


def test_content_hash_matches_ingestion(researcher_env, granted_mounts):
    ds = ed.open_dataset("demo-ct", 1)
    assert ds.content_hash == granted_mounts.v1_content_hash  # from .enclave-version.json
    # Without the hub's file it is computed from the files, the way ingestion computes it.
    bare = GrantedVersion("demo-ct", 1, granted_mounts.v1)
    assert bare.content_hash == granted_mounts.v1_content_hash
    assert ed.open_dataset("demo-ct", 2).content_hash == granted_mounts.v2_content_hash
    info = json.loads((granted_mounts.v1 / ".enclave-version.json").read_text())
    assert info["name"] == "demo-ct" and info["version"] == 1


def test_content_hash_changes_with_content(tmp_path, granted_mounts):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(granted_mounts.v1, copy)
    (copy / "tables" / "clinical.csv").chmod(0o644)
    before = compute_content_hash(copy)
    with open(copy / "tables" / "clinical.csv", "a") as fh:
        fh.write("SUBJ-0099,50,F,0\n")
    (copy / "dataset.yaml").touch()
    import os

    os.utime(copy / "dataset.yaml", (1, 1))  # a different cache key
    assert compute_content_hash(copy) != before


def test_import_is_light():
    code = (
        "import sys, enclave.data; "
        "print([m for m in ('torch', 'monai', 'pandas', 'numpy', 'pydicom') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_hub_version_info_from_a_catalog_version(tmp_path, monkeypatch, granted_mounts):
    import shutil
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from enclave.data.mounts import write_version_info

    folder = tmp_path / "datasets" / "demo-ct" / "4"
    shutil.copytree(granted_mounts.v1, folder)
    (folder / ".enclave-version.json").unlink()
    version = SimpleNamespace(  # the attributes catalog.models.DatasetVersion has
        dataset=SimpleNamespace(name="demo-ct", title="Demo", description="d"),
        version=4,
        content_hash=granted_mounts.v1_content_hash,
        manifest={"modality": "CT"},
        expires_at=datetime(2027, 1, 31, tzinfo=UTC),
    )
    path = write_version_info(folder, version)
    assert json.loads(path.read_text()) == {
        "name": "demo-ct",
        "version": 4,
        "content_hash": granted_mounts.v1_content_hash,
        "title": "Demo",
        "description": "d",
        "modality": "CT",
        "expires_at": "2027-01-31T00:00:00+00:00",
    }
    monkeypatch.setenv("ENCLAVE_DATASETS_DIR", str(tmp_path / "datasets"))
    granted = ed.list_datasets()[0]
    assert granted.expires_at == "2027-01-31T00:00:00+00:00" and granted.title == "Demo"
    assert compute_content_hash(folder) == granted_mounts.v1_content_hash  # file is hidden
