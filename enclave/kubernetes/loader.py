"""A user pod's dataset loader: the init container that fills ``~/datasets`` in memory.

It redeems the pod's single-use ticket at the key holder (``enclave.kubernetes.keyholder``),
unpacks the tar stream of decrypted versions into the pod's ``datasets`` volume (an
``emptyDir`` with ``medium: Memory``: a tmpfs counted against the pod's memory limit, gone when
the pod goes), writes the user's grants file (``enclave.workspace.datasets.write_grants_file``)
and makes everything read-only. The notebook container mounts the same volume read-only at
``~/datasets``, so the layout is the one the local spawner gives: ``NAME/VERSION/...``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from datetime import datetime
from pathlib import Path
from typing import IO, cast

import httpx

from enclave.errors import EnclaveError
from enclave.kubernetes.keyholder import DELIVERY_INDEX

TICKET_ENV = "ENCLAVE_DELIVERY_TICKET"
URL_ENV = "ENCLAVE_KEYHOLDER_URL"
TARGET_ENV = "ENCLAVE_DATASETS_TARGET"


class LoaderError(EnclaveError):
    """The pod's datasets cannot be loaded."""


class _Stream(io.RawIOBase):
    """``read(n)`` over an httpx byte iterator, for ``tarfile``'s stream mode."""

    def __init__(self, chunks: object) -> None:
        self._chunks = iter(chunks)  # type: ignore[call-overload]
        self._buf = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        n = -1 if n is None else n
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                break
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def unpack(stream: IO[bytes], target: Path) -> list[dict[str, object]]:
    """Unpack a delivery into ``target``; return the index of versions it held."""
    index: list[dict[str, object]] | None = None
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.name == DELIVERY_INDEX:
                fh = tar.extractfile(member)
                assert fh is not None
                index = list(json.loads(fh.read())["versions"])
                continue
            if index is None:
                raise LoaderError("the delivery does not start with its index")
            # "data": regular files and folders below target only, no links, no devices.
            tar.extract(member, target, filter="data")
    if index is None:
        raise LoaderError("the delivery was empty (no index)")
    return index


def make_read_only(tree: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o555)
    # The volume's own root belongs to the kubelet; the notebook container mounts it read-only.


def load(url: str, ticket: str, target: Path, *, timeout: float = 60.0) -> list[dict[str, object]]:
    """Fetch and unpack this pod's datasets into ``target`` (an empty folder)."""
    from enclave.workspace.datasets import MountedDataset, write_grants_file

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise LoaderError(f"{target} is not empty: the datasets volume must be a fresh emptyDir")
    where = f"{url.rstrip('/')}/deliveries/{ticket}"
    try:
        with httpx.stream("GET", where, timeout=timeout) as reply:
            if reply.status_code != 200:
                reply.read()
                try:
                    why = reply.json().get("error", reply.text)
                except ValueError:
                    why = reply.text[:200]
                raise LoaderError(f"the key holder refused the delivery: {why}")
            index = unpack(cast(IO[bytes], _Stream(reply.iter_bytes(1 << 20))), target)
    except httpx.HTTPError as exc:
        raise LoaderError(f"the key holder at {url} does not answer ({exc})") from None
    mounted = [
        MountedDataset(
            str(v["name"]),
            int(str(v["version"])),
            target / str(v["name"]) / str(v["version"]),
            datetime.fromisoformat(str(v["expires_at"])) if v.get("expires_at") else None,
            str(v["mode"]),
        )
        for v in index
    ]
    write_grants_file(target, mounted)
    make_read_only(target)
    return index


def main() -> None:
    """Run as the init container: ticket, URL and target from the environment."""
    try:
        missing = [n for n in (TICKET_ENV, URL_ENV, TARGET_ENV) if not os.environ.get(n)]
        if missing:
            raise LoaderError(f"set {', '.join(missing)} (the spawner does)")
        index = load(os.environ[URL_ENV], os.environ[TICKET_ENV], Path(os.environ[TARGET_ENV]))
    except (EnclaveError, OSError, tarfile.TarError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    names = ", ".join(f"{v['name']}@{v['version']}" for v in index) or "none granted"
    print(f"datasets loaded: {names}")


if __name__ == "__main__":
    main()
