"""The native fast path of a decrypting mount: finding the ``enclave-datafs`` binary
(``enclave/datafs/native/datafs.c``, built by ``enclave/datafs/native/build.sh``), handing it a
version's decrypted index and data key over a pipe, and supervising it.

The Python daemon stays the process the hub starts: it reads the configuration, opens the
store's index and checks the tree, then starts the binary, writes it the table below on its
standard input (never in arguments, the environment or a file), forwards its ``ready`` line
and turns its ``fault`` lines into the audit entries :class:`~enclave.datafs.daemon.AuditFaults`
writes, with the same messages as :class:`ingestion.store.RangeReader`. The binary dies with
the daemon (``PR_SET_PDEATHSIG``), so killing the daemon leaves a mount that answers
``ENOTCONN``, as with the Python path.

Which path serves: ``ENCLAVE_DATAFS_IMPLEMENTATION`` = ``auto`` (the default: native when
built), ``native`` (an error when not built) or ``python``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from enclave.errors import EnclaveError
from ingestion.store import (
    StoredDataset,
    StoredFile,
    failed_authentication,
    object_length,
    truncated,
    wrong_object_length,
    wrong_segment,
)

#: Selects the implementation (auto, native, python).
IMPLEMENTATION_ENV = "ENCLAVE_DATAFS_IMPLEMENTATION"
#: Overrides where the binary is looked for.
BINARY_ENV = "ENCLAVE_DATAFS_BINARY"
#: Where ``build.sh`` puts the binary by default: beside its source, inside the package (not
#: under version control; a wheel built without it serves mounts with the Python path).
DEFAULT_BINARY = Path(__file__).resolve().parent / "native" / "enclave-datafs"
BUILD_SCRIPT = Path(__file__).resolve().parent / "native" / "build.sh"
TABLE_MAGIC = b"EDFS1"


class NativeDatafsError(EnclaveError):
    """The native filesystem was asked for and is not built, or its table cannot be made."""


def native_binary() -> Path | None:
    """The built ``enclave-datafs`` binary, or None when it is not built."""
    path = Path(os.environ.get(BINARY_ENV) or DEFAULT_BINARY)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def implementation() -> str:
    """``native`` or ``python``: which path serves the next mount."""
    wanted = os.environ.get(IMPLEMENTATION_ENV, "auto") or "auto"
    if wanted not in ("auto", "native", "python"):
        raise NativeDatafsError(f"{IMPLEMENTATION_ENV}={wanted!r}: use auto, native or python")
    if wanted == "python":
        return "python"
    if native_binary() is None:
        if wanted == "native":
            raise NativeDatafsError(
                f"the native datafs binary is not built ({DEFAULT_BINARY}; run {BUILD_SCRIPT})"
            )
        return "python"
    return "native"


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise NativeDatafsError(f"{value[:60]!r}... is too long for the native table")
    return struct.pack(">H", len(raw)) + raw


def object_file(store: StoredDataset, entry: StoredFile) -> tuple[Path, int, int]:
    """The file holding ``entry``'s object, where it starts and how long it is."""
    _, obj, base, length = store.object_span(entry.path)
    if length is not None:
        return obj, base, length
    try:  # enclave-store/1: the object is its whole file
        return obj, 0, obj.stat().st_size
    except OSError:  # the binary's open reports it, as RangeReader does
        return obj, 0, object_length(entry.size, store.segment_size)


def encode_table(
    store: StoredDataset,
    mountpoint: str,
    extra: dict[str, bytes],
    mtime_ns: int,
) -> tuple[bytearray, list[tuple[str, Path | None]]]:
    """The binary's input (format in ``datafs.c``) and, by file number, each file's stored
    path and object file (None for a file served from memory)."""
    table = bytearray(TABLE_MAGIC)
    table += store.data_key
    table += struct.pack(">IQ", store.segment_size, max(0, mtime_ns))
    table += _text(store.store_id) + _text(mountpoint)
    files: list[tuple[str, Path | None]] = []
    table += struct.pack(">I", len(store.files) + len(extra))
    for entry in store.files.values():
        obj, base, length = object_file(store, entry)
        table += _text(entry.path) + struct.pack(">QB", entry.size, 0)
        table += struct.pack(">I", entry.object) + _text(str(obj))
        table += struct.pack(">QQ", base, length)
        files.append((entry.path, obj))
    for path, content in extra.items():
        table += _text(path) + struct.pack(">QB", len(content), 1) + content
        files.append((path, None))
    return table, files


def fault_message(
    store: StoredDataset, files: list[tuple[str, Path | None]], fields: list[str]
) -> tuple[str, str] | None:
    """(stored path, message) for a ``fault N KIND VALUE`` line's fields: RangeReader's words."""
    try:
        number, kind, value = int(fields[0]), fields[1], int(fields[2])
        path, obj = files[number]
    except (IndexError, ValueError):
        return None
    name = obj.name if obj is not None else "memory"
    if kind == "auth":
        return path, failed_authentication(path, name, value)
    if kind == "length":
        return path, wrong_segment(path, name, value)
    if kind == "truncated":
        return path, truncated(path, name)
    if kind in ("io", "open"):
        return path, f"{path} ({name}): [Errno {value}] {os.strerror(value)}: '{obj}'"
    if kind == "object":
        entry = store.files[path]
        length = object_file(store, entry)[2]
        return path, wrong_object_length(entry, store.store_id, length, value)
    return path, f"{path}: {' '.join(fields[1:])}"


def serve_native(
    binary: Path,
    store: StoredDataset,
    mountpoint: str,
    extra: dict[str, bytes],
    mtime_ns: int,
    *,
    on_ready: Callable[[], None],
    on_fault: Callable[[str, str], None],
) -> int:
    """Run the binary over ``store`` at ``mountpoint`` until it exits; its exit status."""
    table, files = encode_table(store, mountpoint, extra, mtime_ns)
    # Its standard output is a socket: it writes ready and fault lines, and after each fault
    # line waits for our one-byte answer, sent once the audit entry is written.
    ours, theirs = socket.socketpair()
    with ours, theirs:
        proc = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=theirs.fileno(), close_fds=True
        )
        theirs.close()
        return _run(proc, ours, table, store, files, on_ready, on_fault)


def _run(
    proc: subprocess.Popen[bytes],
    channel: socket.socket,
    table: bytearray,
    store: StoredDataset,
    files: list[tuple[str, Path | None]],
    on_ready: Callable[[], None],
    on_fault: Callable[[str, str], None],
) -> int:
    assert proc.stdin is not None

    def forward(signum: int, frame: Any) -> None:
        proc.send_signal(signum)  # it unmounts and exits; we exit when it has

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        proc.stdin.write(table)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # it exited already and said why on standard error
    finally:
        table[:] = bytes(len(table))  # the key's copy in the table
    with channel.makefile("rb") as lines:
        _supervise(lines, channel, store, files, on_ready, on_fault)
    return proc.wait()


def _supervise(
    lines: IO[bytes],
    channel: socket.socket,
    store: StoredDataset,
    files: list[tuple[str, Path | None]],
    on_ready: Callable[[], None],
    on_fault: Callable[[str, str], None],
) -> None:
    for raw in _lines(lines):
        fields = raw.decode("ascii", "replace").split()
        if fields == ["ready"]:
            on_ready()
        elif fields[:1] == ["fault"]:
            try:
                fault = fault_message(store, files, fields[1:])
                if fault is not None:
                    on_fault(*fault)  # AuditFaults writes each distinct fault once
            finally:
                with contextlib.suppress(OSError):
                    channel.sendall(b"k")  # the reader's EIO may go now


def _lines(stream: IO[bytes]) -> Iterable[bytes]:
    while True:
        try:
            line = stream.readline()
        except InterruptedError:
            continue
        if not line:
            return
        yield line
