"""Granted dataset versions, served decrypted inside the enclave and mounted read-only in a home.

Where plaintext exists, and for how long:

* Stored versions stay encrypted on disk (``ingestion.store``). When a user server that is
  granted a version starts, the hub mounts the version through a decrypting filesystem
  (``enclave.datafs``) at ``plaintext_root/<name>`` (root only, mode 0700): each read decrypts
  the store segments it covers, so plaintext lives in the page cache and never on a disk, and
  mounting costs the same for any size of version.
* Each granted user gets a read-only, nosuid, nodev, noexec bind mount of it at
  ``~/datasets/NAME/VERSION``. Every file is root-owned and read-only.
* At every spawn a user's mounts are rebuilt from the catalog's current grants, so a revoked or
  expired grant disappears at the next spawn. When a server stops its mounts go, and a version
  nobody has mounted any more is unmounted. ``enclave down`` unmounts them all.

The hub (root) never follows a link the user could have planted: ``~/datasets`` is replaced when
it is not a root-owned directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from enclave.datafs.mounts import DatafsError, DatafsProcesses, answers, datafs_mounts
from enclave.errors import EnclaveError

DATASETS_DIR = "datasets"
OUTPUTS_DIR = "outputs"
#: The RAM tmpfs earlier enclaves decrypted versions into (``release_all`` still removes one).
PLAINTEXT_FS = "enclave-plaintext"
BIND_OPTIONS = "remount,bind,ro,nosuid,nodev,noexec"


class DatasetMountError(EnclaveError):
    """A granted dataset version cannot be made available in a workspace."""


@dataclass(frozen=True)
class VersionRecord:
    """What the mounter reads of a granted version: a catalog ``DatasetVersion`` carries these
    and more; benchmarks, tests and grant sources without a catalog build this one."""

    name: str
    version: int
    store_location: str
    wrapped_key: bytes
    content_hash: str
    expires_at: datetime | None = None
    mode: str = "desktop"  # catalog.models.AccessMode of the grant


@dataclass(frozen=True)
class MountedDataset:
    name: str
    version: int
    path: Path
    expires_at: datetime | None = None
    mode: str = "desktop"  # catalog.models.AccessMode of the grant


@dataclass(frozen=True)
class MountInfo:
    mount_id: int
    device: str
    root: str
    mount_point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    mounts = []
    with open(path) as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            parts, tail = left.split(), right.split()
            mounts.append(
                MountInfo(
                    int(parts[0]),
                    parts[2],
                    _unescape(parts[3]),
                    _unescape(parts[4]),
                    tail[0],
                    tail[1] if len(tail) > 1 else "",
                )
            )
    return mounts


def _run(argv: Sequence[str], what: str) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DatasetMountError(f"{what} failed: {proc.stderr.strip() or proc.returncode}")


def write_grants_file(datasets_dir: Path, mounted: list[MountedDataset]) -> Path:
    """``~/datasets/.enclave-grants.json``: this user's grant of each mounted version (its
    access mode and expiry), which ``enclave.data.list_datasets()`` shows. The decrypted trees
    are shared by every grantee, so what is per user lives here, root-owned and read-only."""
    from enclave.data.mounts import GRANTS_FILE

    path = Path(datasets_dir) / GRANTS_FILE
    entries = [
        {
            "name": m.name,
            "version": m.version,
            "mode": m.mode,
            "expires_at": m.expires_at.isoformat() if m.expires_at else None,
        }
        for m in mounted
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
    with os.fdopen(fd, "w") as fh:
        json.dump({"grants": entries}, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def _root_owned_dir(path: Path, mode: int = 0o755) -> None:
    """A directory root owns at ``path``; anything the user put there is moved aside first."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not (os.path.isdir(path) and not os.path.islink(path) and st.st_uid == 0):
        aside = path.with_name(f"{path.name}.moved-{int(time.time())}")
        os.rename(path, aside)  # rename never follows a link
        st = None
    if st is None:
        os.mkdir(path, mode)
    os.chown(path, 0, 0, follow_symlinks=False)
    os.chmod(path, mode)


class DatasetMounter:
    """Serves granted versions through decrypting mounts and bind-mounts them read-only into
    homes."""

    def __init__(self, plaintext_root: Path, master_key: Any = None, catalog_url: str = "") -> None:
        self.plaintext_root = Path(plaintext_root)
        self.master_key = master_key
        self.catalog_url = catalog_url
        self._lock = threading.Lock()
        self._version_locks: dict[str, threading.Lock] = {}
        self._processes = DatafsProcesses(self.plaintext_root)

    # ---- the decrypting mounts

    def _prepare_root(self) -> None:
        """``plaintext_root``: root's, mode 0700 (only the bind mounts in homes reach in)."""
        self.plaintext_root.mkdir(parents=True, exist_ok=True)
        os.chown(self.plaintext_root, 0, 0)
        os.chmod(self.plaintext_root, 0o700)

    @staticmethod
    def plaintext_name(version: Any) -> str:
        """One mount per stored version (its store location identifies it)."""
        return hashlib.sha256(str(version.store_location).encode()).hexdigest()[:32]

    def plaintext_for(self, version: Any) -> Path:
        """The decrypting mount of ``version``, started on first use (and again when the
        process behind it died)."""
        name = self.plaintext_name(version)
        with self._lock:
            lock = self._version_locks.setdefault(name, threading.Lock())
        with lock:
            mounted = datafs_mounts(self.plaintext_root, read_mountinfo()).get(name)
            if mounted is not None:
                if answers(mounted.mount_point):
                    return Path(mounted.mount_point)
                self._processes.stop(mounted)  # its process died: no stale plaintext
            if self.master_key is None:
                raise DatasetMountError(
                    f"dataset {version.name} version {version.version} is granted but the enclave "
                    "is sealed: unseal it (enclave up asks the custodians) to mount datasets"
                )
            from enclave.data.mounts import VERSION_INFO_FILE, version_info
            from ingestion.store import StoreError, unwrap_data_key

            self._prepare_root()
            # The catalog's content hash for lineage, so notebooks need not re-hash the data.
            # The mount is shared by every grantee, so no one user's grant expiry goes in it.
            shared = (
                dataclasses.replace(version, expires_at=None)
                if dataclasses.is_dataclass(version)
                and not isinstance(version, type)  # an instance, not the class itself
                and hasattr(version, "expires_at")
                else version
            )
            info = json.dumps(version_info(shared), indent=2, sort_keys=True) + "\n"
            label = f"{version.name} v{version.version}"
            try:
                key = unwrap_data_key(version, self.master_key)
                return self._processes.start(
                    name,
                    store_location=str(version.store_location),
                    data_key=key,
                    label=label,
                    extra_files={VERSION_INFO_FILE: info},
                    catalog_url=self.catalog_url,
                )
            except (StoreError, DatafsError) as exc:
                raise DatasetMountError(f"mounting {label}: {exc}") from None

    # ---- per-user mounts

    @staticmethod
    def datasets_dir(home: Path) -> Path:
        return Path(home) / DATASETS_DIR

    def user_mounts(self, home: Path) -> list[MountInfo]:
        prefix = str(self.datasets_dir(home).resolve()) + "/"
        return [m for m in read_mountinfo() if m.mount_point.startswith(prefix)]

    def unmount_user(self, home: Path) -> None:
        """Remove every dataset mount in a home (deepest first) and the empty folders."""
        for m in sorted(self.user_mounts(home), key=lambda m: m.mount_point, reverse=True):
            _run(["umount", "--lazy", m.mount_point], f"unmounting {m.mount_point}")
        base = self.datasets_dir(home)
        if base.is_dir() and not base.is_symlink() and os.lstat(base).st_uid == 0:
            for child in sorted(base.glob("*/*"), reverse=True):
                with contextlib.suppress(OSError):
                    child.rmdir()
            for child in base.glob("*"):
                with contextlib.suppress(OSError):
                    child.rmdir()

    def mount_for(self, account: Any, versions: Iterable[Any]) -> list[MountedDataset]:
        """Make exactly ``versions`` visible at ``~/datasets/NAME/VERSION``, read-only."""
        home = Path(account.home)
        versions = list(versions)
        self.unmount_user(home)
        _root_owned_dir(self.datasets_dir(home))
        outputs = home / OUTPUTS_DIR
        if not outputs.exists() and not outputs.is_symlink():
            outputs.mkdir()
            os.chown(outputs, account.uid, account.gid)
        mounted = []
        for v in versions:
            source = self.plaintext_for(v)
            name_dir = self.datasets_dir(home) / v.name
            _root_owned_dir(name_dir)
            point = name_dir / str(v.version)
            _root_owned_dir(point, 0o555)
            _run(["mount", "--bind", str(source), str(point)], f"mounting {v.name}@{v.version}")
            _run(["mount", "-o", BIND_OPTIONS, str(point)], f"making {point} read-only")
            mounted.append(
                MountedDataset(
                    v.name,
                    int(v.version),
                    point,
                    getattr(v, "expires_at", None),
                    str(getattr(v, "mode", "desktop")),
                )
            )
        write_grants_file(self.datasets_dir(home), mounted)
        self.collect_garbage()
        return mounted

    def collect_garbage(self) -> list[str]:
        """Unmount the decrypting mounts that no home binds any more."""
        mountinfo = read_mountinfo()
        removed = []
        with self._lock:
            for name, mount in datafs_mounts(self.plaintext_root, mountinfo).items():
                if any(
                    m.device == mount.device and m.mount_point != mount.mount_point
                    for m in mountinfo
                ):
                    continue
                self._processes.stop(mount)
                removed.append(name)
            self._processes.reap()
        return removed

    def release_all(self, homes: Iterable[Path] = ()) -> None:
        """Unmount every dataset mount and every decrypting mount (``enclave down``); also a
        plaintext tmpfs left by an enclave from before the decrypting mounts."""
        for home in homes:
            self.unmount_user(home)
        mountinfo = read_mountinfo()
        target = str(self.plaintext_root.resolve())
        served = datafs_mounts(self.plaintext_root, mountinfo)
        devices = {m.device for m in served.values()}
        for m in sorted(mountinfo, key=lambda m: m.mount_point, reverse=True):
            if m.device in devices and not m.mount_point.startswith(target + "/"):
                _run(["umount", "--lazy", m.mount_point], f"unmounting {m.mount_point}")
        for mount in served.values():
            self._processes.stop(mount)
        self._processes.close_spare()
        for m in mountinfo:
            if m.mount_point == target and m.source == PLAINTEXT_FS:
                _run(["umount", "--lazy", target], "unmounting the old plaintext tmpfs")
