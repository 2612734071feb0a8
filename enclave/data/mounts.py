"""Which dataset versions are granted to me: the read-only mounts under ``~/datasets``.

In a user server the hub bind-mounts every granted version at ``~/datasets/NAME/VERSION``
(``enclave.workspace.datasets``) and nothing else, so the folder tree *is* the grant list: this
module never asks the catalog and needs no network. A version folder is the dataset exactly as
the provider sent it plus ``derived/`` (tables the enclave computed at ingestion). The hub may
put ``.enclave-version.json`` next to it (see :func:`write_version_info`); without one the
content hash is computed here the way ingestion computes it and kept in memory.

Only the standard library and PyYAML are imported here, so ``import enclave.data`` stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.errors import EnclaveError
from secret_sharing.fileio import sha256_file

VERSION_INFO_FILE = ".enclave-version.json"
#: In ``~/datasets``: this user's grant (access mode, expiry) of each mounted version.
GRANTS_FILE = ".enclave-grants.json"
DERIVED_DIR = "derived"


class DatasetAccessError(EnclaveError):
    """A dataset a notebook asked for cannot be opened."""


class DatasetNotGranted(DatasetAccessError):
    """The dataset exists in the enclave, but this version is not granted to the user."""


class DatasetNotFound(DatasetAccessError):
    """No granted dataset has that name (it may not exist, or may not be granted at all)."""


def datasets_root() -> Path:
    """Where granted versions are mounted: ``$ENCLAVE_DATASETS_DIR``, else ``~/datasets``.

    ``$ENCLAVE_DATASETS`` (what the spawner sets today) is honoured too.
    """
    value = os.environ.get("ENCLAVE_DATASETS_DIR") or os.environ.get("ENCLAVE_DATASETS")
    return Path(value).expanduser() if value else Path.home() / "datasets"


def outputs_root() -> Path:
    """Where results go (the only folder the airlock exports from): ``~/outputs``."""
    value = os.environ.get("ENCLAVE_OUTPUTS_DIR") or os.environ.get("ENCLAVE_OUTPUTS")
    return Path(value).expanduser() if value else Path.home() / "outputs"


@dataclass(frozen=True)
class GrantedVersion:
    """One mounted, granted dataset version (cheap: the content hash is computed on demand)."""

    name: str
    version: int
    path: Path
    info: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    grant: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def title(self) -> str:
        return str(self.info.get("title") or self._manifest_value("title") or self.name)

    @property
    def description(self) -> str:
        return str(self.info.get("description") or self._manifest_value("description") or "")

    @property
    def modality(self) -> str:
        return str(self.info.get("modality") or self._manifest_value("modality") or "")

    @property
    def expires_at(self) -> str | None:
        """When my grant ends (ISO 8601, UTC), or None for no end."""
        return self.grant.get("expires_at") or self.info.get("expires_at")

    @property
    def mode(self) -> str:
        """How my grant lets me use it: ``desktop`` (pixels only: mounted only in desktop
        sessions) or ``notebook`` (JupyterLab in the browser may show it too)."""
        return str(self.grant.get("mode") or "desktop")

    @property
    def content_hash(self) -> str:
        """The catalog's content hash of this version (identifies the exact data used)."""
        recorded = self.info.get("content_hash")
        return str(recorded) if recorded else compute_content_hash(self.path)

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def _manifest_value(self, key: str) -> Any:
        return _manifest_summary(self.path).get(key)

    def __str__(self) -> str:
        return self.label


class GrantedList(list):
    """``list_datasets()``'s result: a plain list that prints as a table in a notebook."""

    def __repr__(self) -> str:
        if not self:
            return f"no datasets are granted to you (nothing mounted under {datasets_root()})"
        width = max(len(v.label) for v in self)
        lines = [f"{v.label:<{width}}  {v.modality:<4} {v.mode:<8} {v.title}" for v in self]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        if not self:
            return f"<p>{escape(repr(self))}</p>"
        rows = "".join(
            f"<tr><td>{escape(v.name)}</td><td>{v.version}</td><td>{escape(v.modality)}</td>"
            f"<td>{escape(v.mode)}</td><td>{escape(v.title)}</td>"
            f"<td>{escape(v.expires_at or '')}</td></tr>"
            for v in self
        )
        return (
            "<table><thead><tr><th>dataset</th><th>version</th><th>modality</th><th>access</th>"
            f"<th>title</th><th>grant expires</th></tr></thead><tbody>{rows}</tbody></table>"
        )


def _read_info(folder: Path) -> dict[str, Any]:
    path = folder / VERSION_INFO_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_version_folder(path: Path) -> bool:
    return path.name.isdigit() and path.is_dir() and not path.name.startswith("0")


def _read_grants(root: Path) -> dict[tuple[str, int], dict[str, Any]]:
    try:
        data = json.loads((root / GRANTS_FILE).read_text())
        entries = data.get("grants", []) if isinstance(data, dict) else []
        return {(str(e["name"]), int(e["version"])): e for e in entries if isinstance(e, dict)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def granted_versions(root: Path | None = None) -> list[GrantedVersion]:
    """Every mounted version, sorted by name then version number."""
    root = datasets_root() if root is None else Path(root)
    found: list[GrantedVersion] = []
    try:
        names = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return found
    except PermissionError as exc:
        raise DatasetAccessError(
            f"cannot read the datasets folder {root}: {exc.strerror}"
        ) from None
    grants = _read_grants(root)
    for name_dir in names:
        try:
            versions = [p for p in name_dir.iterdir() if _is_version_folder(p)]
        except OSError:
            continue
        for folder in sorted(versions, key=lambda p: int(p.name)):
            # An empty mount point (a mount that failed or was revoked) is not a grant.
            if not (folder / "dataset.yaml").is_file():
                continue
            number = int(folder.name)
            found.append(
                GrantedVersion(
                    name_dir.name,
                    number,
                    folder,
                    _read_info(folder),
                    grants.get((name_dir.name, number), {}),
                )
            )
    return found


def list_datasets() -> GrantedList:
    """The dataset versions granted to me (mounted in this server), as a printable list."""
    return GrantedList(granted_versions())


def _granted_text(granted: list[GrantedVersion]) -> str:
    return ", ".join(v.label for v in granted) if granted else "none"


def resolve(name: str, version: int | str | None = None) -> GrantedVersion:
    """The granted version ``name`` / ``version`` (latest granted when ``version`` is None)."""
    if not isinstance(name, str) or not name:
        raise DatasetAccessError("give a dataset name, e.g. open_dataset('demo-ct')")
    if version is not None:
        text = str(version).lstrip("v")
        if not text.isdigit():
            raise DatasetAccessError(
                f"dataset version must be a number such as 1 or 2, not {version!r}"
            )
        version = int(text)
    granted = granted_versions()
    same_name = [v for v in granted if v.name == name]
    if not same_name:
        which = f"dataset '{name}'" + (f" version {version}" if version is not None else "")
        raise DatasetNotFound(
            f"{which} is not granted to you or does not exist; granted: {_granted_text(granted)}"
        )
    if version is None:
        return same_name[-1]
    for v in same_name:
        if v.version == version:
            return v
    raise DatasetNotGranted(
        f"dataset '{name}' version {version} is not granted to you; "
        f"granted: {_granted_text(granted)}"
    )


# --- content hash ------------------------------------------------------------------------

_hash_cache: dict[tuple[str, int, float], str] = {}
_hash_lock = threading.Lock()


def provider_files(folder: Path) -> list[str]:
    """The provider's files (POSIX, relative), as ingestion inventories them.

    Hidden entries and ``derived/`` are not the provider's (ingestion refuses the first and
    writes the second itself).
    """
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(folder)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and not (rel_dir == Path(".") and d == DERIVED_DIR)
        )
        for name in sorted(filenames):
            full = here / name
            if name.startswith(".") or full.is_symlink() or not full.is_file():
                continue
            files.append((rel_dir / name).as_posix())
    return files


def compute_content_hash(folder: Path) -> str:
    """``ingestion.validate.content_hash`` of a version folder (cached per folder in memory)."""
    folder = Path(folder)
    stamp = (folder / "dataset.yaml").stat().st_mtime if (folder / "dataset.yaml").exists() else 0
    key = (str(folder.resolve()), os.getpid(), stamp)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached:
        return cached
    digest = hashlib.sha256(b"enclave-dataset-v1\n")
    for rel in sorted(provider_files(folder)):
        digest.update(f"{rel}\0{sha256_file(folder / rel)}\n".encode())
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


_manifest_cache: dict[str, dict[str, Any]] = {}


def _manifest_summary(folder: Path) -> dict[str, Any]:
    """Title, description and modality from dataset.yaml without full validation."""
    key = str(folder)
    if key not in _manifest_cache:
        import yaml

        try:
            data = yaml.safe_load((folder / "dataset.yaml").read_text())
        except (OSError, yaml.YAMLError):
            data = None
        _manifest_cache[key] = data if isinstance(data, dict) else {}
    return _manifest_cache[key]


# --- hook for the hub ----------------------------------------------------------------------


def version_info(version: Any) -> dict[str, Any]:
    """``.enclave-version.json`` content for a catalog ``DatasetVersion`` (or any object with
    ``name``/``dataset.name``, ``version``, ``content_hash`` and optionally ``manifest``)."""
    manifest = getattr(version, "manifest", None) or {}
    dataset = getattr(version, "dataset", None)
    name = getattr(version, "name", None) or getattr(dataset, "name", None) or manifest.get("name")
    info = {
        "name": name,
        "version": int(version.version),
        "content_hash": version.content_hash,
        "title": manifest.get("title") or getattr(dataset, "title", None),
        "description": manifest.get("description") or getattr(dataset, "description", None),
        "modality": manifest.get("modality"),
    }
    expires = getattr(version, "expires_at", None)
    if expires is not None:
        info["expires_at"] = expires.isoformat() if hasattr(expires, "isoformat") else str(expires)
    return {k: v for k, v in info.items() if v is not None}


def write_version_info(folder: Path, version: Any) -> Path:
    """Write ``.enclave-version.json`` into a materialized version folder (before it is made
    read-only), so notebooks get the catalog's content hash without hashing the data again."""
    path = Path(folder) / VERSION_INFO_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(version_info(version), indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)
    return path
