"""Kubernetes mode fixtures: the manifests rendered once per session, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from enclave.kubernetes.render import render
from enclave.kubernetes.settings import KubeSettings


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
