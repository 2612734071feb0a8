"""Kubernetes mode fixtures: the manifests rendered once per session, offline; a key holder
with a real custody key set, encrypted store and SQLite catalog (``site``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from catalog.service import open_catalog
from enclave.custody import init_custody, unseal
from enclave.kubernetes.keyholder import Keyholder, create_app
from enclave.kubernetes.render import render
from enclave.kubernetes.settings import KubeSettings
from ingestion.store import write_version


@pytest.fixture(scope="session")
def settings() -> KubeSettings:
    return KubeSettings.load()


@pytest.fixture(scope="session")
def rendered(settings: KubeSettings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s")
    render(settings, out)
    return out


@pytest.fixture(scope="session")
def objects(rendered: Path) -> list[dict]:
    found = []
    for path in [rendered / "enclave.yaml", *sorted((rendered / "pods").glob("*.yaml"))]:
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


@pytest.fixture(scope="session")
def values(rendered: Path) -> dict:
    return yaml.safe_load((rendered / "z2jh-values.yaml").read_text())


@pytest.fixture(scope="session")
def pods(rendered: Path) -> dict[str, dict]:
    return {
        p.stem: yaml.safe_load(p.read_text()) for p in sorted((rendered / "pods").glob("*.yaml"))
    }


#: The hub's key holder token in these tests.
TOKEN = "t" * 40


@pytest.fixture
def site(tmp_path: Path):
    """A sealed key holder, its test client and the custodians' three mnemonics (2 unseal).

    Researchers are granted ``open-ct`` for notebooks and ``private-ct`` for desktops only."""
    state = tmp_path / "state"
    mnemonics = init_custody(state, custodians=3, threshold=2)
    key = unseal(state, mnemonics[:2])
    catalog = open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    provider, _ = catalog.add_provider("hospital", b"pem", "fp", actor="test")
    for name, mode in (("open-ct", "notebook"), ("private-ct", "desktop")):
        source = tmp_path / f"src-{name}"
        (source / "scans").mkdir(parents=True)
        (source / "scans" / "a.bin").write_bytes(name.encode() * 1000)
        (source / "labels.csv").write_text("id,label\n1,nodule\n")
        stored = write_version(source, state / "store", key, name_hint=name)
        catalog.record_transfer(f"tr-{name}", provider, dataset_name=name, k=2, n=3, share_length=1)
        catalog.catalog_version(
            f"tr-{name}",
            manifest={"name": name, "title": name, "modality": "CT"},
            content_hash=("a" if name == "open-ct" else "b") * 64,
            size_bytes=stored.size_bytes,
            store_location=stored.store_location,
            wrapped_key=stored.wrapped_key,
            files=[{"path": "labels.csv", "size": 18, "sha256": "c" * 64, "kind": "table"}],
            actor="test",
        )
        catalog.publish(name, 1, actor="test")
        catalog.grant(name, 1, group="researchers", mode=mode, actor="test")
    keyholder = Keyholder(state, catalog, hub_token=TOKEN)
    yield keyholder, TestClient(create_app(keyholder)), mnemonics
    catalog.close()
