"""A site's Kubernetes settings: ``deploy/kubernetes/enclave.yaml``, merged with an override.

Every value the renderer, the hub's ``extraConfig`` and the spawner need comes from here, so a
site changes one file. Errors name the file and the key at fault in one line.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from enclave._data import data_path
from enclave.errors import EnclaveError

#: The shipped defaults, found with the other data folders.
DEFAULTS = ("deploy", "kubernetes", "enclave.yaml")
#: Image names, one per Dockerfile under images/.
IMAGES = ("hub", "user", "user-gpu", "services")


class KubeSettingsError(EnclaveError):
    """The Kubernetes settings are missing a value or hold a wrong one."""


def default_settings_path() -> Path:
    return data_path(*DEFAULTS)


def _read(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise KubeSettingsError(f"settings file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise KubeSettingsError(f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise KubeSettingsError(f"{path} must hold a mapping at the top level")
    return loaded


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class KubeSettings:
    """The merged settings, with typed access to what the code reads."""

    raw: dict[str, Any]
    source: str

    @classmethod
    def load(cls, override: Path | None = None) -> KubeSettings:
        base_path = default_settings_path()
        raw = _read(base_path)
        source = str(base_path)
        if override is not None:
            extra = _read(override)
            unknown = sorted(set(extra) - set(raw))
            if unknown:
                raise KubeSettingsError(f"{override}: unknown setting(s) {', '.join(unknown)}")
            raw = merge(raw, extra)
            source = f"{base_path} + {override}"
        settings = cls(raw, source)
        settings.check()
        return settings

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], source: str = "settings") -> KubeSettings:
        settings = cls(copy.deepcopy(raw), source)
        settings.check()
        return settings

    def get(self, dotted: str) -> Any:
        node: Any = self.raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KubeSettingsError(f"{self.source}: {dotted} is not set")
            node = node[part]
        return node

    def text(self, dotted: str) -> str:
        value = self.get(dotted)
        if not isinstance(value, str):
            raise KubeSettingsError(f"{self.source}: {dotted} must be a string, not {value!r}")
        return value

    def number(self, dotted: str) -> int:
        value = self.get(dotted)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise KubeSettingsError(
                f"{self.source}: {dotted} must be a whole number >= 0, not {value!r}"
            )
        return value

    def check(self) -> None:
        """Read every value once, so a wrong one fails at load and not half-way through."""
        for key in (
            "chart.version",
            "namespace",
            "images.registry",
            "images.tag",
            "hub.host",
            "catalog.database_secret",
            "catalog.database_secret_key",
            "ingestion.storage_class",
            "users.storage_class",
            "users.home_size",
            "users.datasets_memory",
            "airlock.store_size",
            "airlock.storage_class",
        ):
            self.text(key)
        for key in (
            "catalog.port",
            "catalog.replicas",
            "ingestion.port",
            "ingestion.receivers",
            "ingestion.keyholder_port",
            "airlock.port",
            "users.uid",
            "users.gid",
            "hub.idle_timeout_seconds",
        ):
            self.number(key)
        if self.number("users.uid") == 0:
            raise KubeSettingsError(f"{self.source}: users.uid must not be 0 (root)")
        from enclave.workspace.profiles import PROFILES

        for name in PROFILES:
            self.number(f"profiles.{name}.gpus")
            self.text(f"profiles.{name}.shm_size")
            if not isinstance(self.get(f"profiles.{name}.node_selector"), dict):
                raise KubeSettingsError(f"{self.source}: profiles.{name}.node_selector: a mapping")
            if not isinstance(self.get(f"profiles.{name}.tolerations"), list):
                raise KubeSettingsError(f"{self.source}: profiles.{name}.tolerations: a list")
        versions = self.get("kubernetes_versions")
        if not versions or not all(isinstance(v, str) for v in versions):
            raise KubeSettingsError(f"{self.source}: kubernetes_versions: a list of strings")

    @property
    def namespace(self) -> str:
        return self.text("namespace")

    def image(self, name: str) -> str:
        if name not in IMAGES:
            raise KubeSettingsError(f"no image named {name!r} (images: {', '.join(IMAGES)})")
        registry = self.text("images.registry").rstrip("/")
        return f"{registry}/enclave-{name}:{self.text('images.tag')}"

    def service_url(self, name: str, port_key: str) -> str:
        """In-cluster URL of one of our Services."""
        return f"http://enclave-{name}.{self.namespace}.svc.cluster.local:{self.number(port_key)}"

    @property
    def catalog_url(self) -> str:
        return self.service_url("catalog", "catalog.port")

    @property
    def airlock_url(self) -> str:
        return self.service_url("airlock", "airlock.port")

    @property
    def keyholder_url(self) -> str:
        return self.service_url("ingestion", "ingestion.keyholder_port")
