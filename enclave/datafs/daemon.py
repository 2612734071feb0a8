"""``python -m enclave.datafs``: one decrypting mount of one stored version, in the foreground.

The hub (root) starts it and writes its configuration as one JSON object to its standard
input, so the version's data key never appears in an argument list, the environment or a
file::

    {"store": "/var/lib/enclave/store/ID", "data_key": "<64 hex>", "mountpoint": "...",
     "label": "demo-ct v1", "extra_files": {".enclave-version.json": "..."},
     "catalog_url": "sqlite:///...", "mtime_ns": 0}

It prints ``ready`` on its standard output once the kernel has the mount, and serves until
the mount is unmounted or it gets SIGTERM/SIGINT. It imports everything before reading its
input, so the hub can start one ahead of need (a spare) and hand it a version at once; an
empty input ends it quietly. With the native binary built (``enclave.datafs.nativefs``) it
hands the version to that process and supervises it instead of serving itself. A read that fails authentication is an
``EIO`` for the reader, a line on standard error, and an audit entry
(``dataset.read_failed``) naming the version, the file and the store object.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from enclave.errors import EnclaveError

#: The FUSE mount options: read-only for everyone, the kernel checks the mode bits.
MOUNT_OPTIONS: dict[str, Any] = {
    "ro": True,
    "allow_other": True,
    "default_permissions": True,
    "nosuid": True,
    "nodev": True,
    "noexec": True,
    "fsname": "enclave-datafs",
    "subtype": "enclave",
}


class DatafsConfigError(EnclaveError):
    """The configuration on the daemon's standard input is missing or wrong."""


def read_config(text: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatafsConfigError(f"datafs configuration is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise DatafsConfigError("datafs configuration must be a JSON object")
    for key in ("store", "data_key", "mountpoint", "label"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise DatafsConfigError(f"datafs configuration needs {key!r} (text)")
    try:
        data_key = bytes.fromhex(config["data_key"])
    except ValueError:
        raise DatafsConfigError("datafs configuration's data_key is not hex") from None
    if len(data_key) != 32:
        raise DatafsConfigError("datafs configuration's data_key must be 32 bytes")
    config["data_key"] = data_key
    return config


class AuditFaults:
    """Reports read faults to standard error and, with a catalog, to the audit log
    (``enclave.workspace.access_log``), each distinct fault once."""

    def __init__(self, label: str, catalog_url: str | None) -> None:
        self.label = label
        self.catalog_url = catalog_url or ""
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, stored: str, message: str) -> None:
        with self._lock:
            if message in self._reported:
                return
            self._reported.add(message)
        print(f"enclave-datafs: {self.label}: {message}", file=sys.stderr, flush=True)
        try:
            from enclave.workspace import access_log

            access_log.record(
                self.catalog_url,
                "enclave-datafs",
                "dataset.read_failed",
                self.label,
                path=stored,
                error=message,
            )
        except Exception as exc:  # the reader already has its EIO; say the audit failed
            print(
                f"enclave-datafs: {self.label}: could not write the audit entry ({exc})",
                file=sys.stderr,
                flush=True,
            )


def serve(config: dict[str, Any]) -> int:
    """Mount and serve until unmounted: with the native binary when :func:`implementation`
    says so (the tree is still built here, to refuse what the Python path refuses)."""
    from enclave.datafs.fs import DecryptingFS, DirectFUSE
    from enclave.datafs.nativefs import implementation, native_binary, serve_native
    from enclave.datafs.tree import Attributes, Tree
    from ingestion.store import StoredDataset

    store = StoredDataset(Path(config["store"]), config["data_key"])
    extra = {k: str(v).encode() for k, v in (config.get("extra_files") or {}).items()}
    tree = Tree(
        {f.path: f.size for f in store.files.values()},
        extra,
        Attributes(mtime_ns=int(config.get("mtime_ns") or 0)),
    )
    ready = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)

    def signal_ready() -> None:
        os.write(ready, b"ready\n")
        os.close(ready)

    on_fault = AuditFaults(config["label"], config.get("catalog_url"))
    if implementation() == "native":
        binary = native_binary()
        assert binary is not None
        return serve_native(
            binary,
            store,
            config["mountpoint"],
            extra,
            tree.attributes.mtime_ns,
            on_ready=signal_ready,
            on_fault=on_fault,
        )
    fs = DecryptingFS(tree, store, on_fault=on_fault, on_ready=signal_ready)
    DirectFUSE(fs, config["mountpoint"], foreground=True, raw_fi=True, **MOUNT_OPTIONS)
    return 0


def main() -> int:
    # Imported before the configuration is read: the hub keeps one process waiting here, so
    # that a spawn pays for the index and the mount, not for starting Python.
    import enclave.datafs.fs
    import enclave.datafs.nativefs  # noqa: F401
    import ingestion.store  # noqa: F401

    text = sys.stdin.read()
    if not text.strip():
        return 0  # a spare the hub no longer needs (it closed our input)
    try:
        config = read_config(text)
        print(
            f"enclave-datafs: serving {config['label']} at {config['mountpoint']}",
            file=sys.stderr,
            flush=True,
        )
        return serve(config)
    except EnclaveError as exc:
        print(f"enclave-datafs: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # libfuse's own failure (it printed why)
        print(f"enclave-datafs: the mount failed ({exc})", file=sys.stderr)
        return 1
