"""Positional reads and writes that finish the job (a short read or write is legal on
Linux), the page-cache hygiene of streams written once, and a file's SHA-256.

Splitting writes blocks at known offsets from several threads, reconstruction reads k blocks
side by side into one buffer, unpacking and the dataset store write lists of views without
joining them first; all of them need the same loops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
from collections.abc import Sequence
from functools import cache
from typing import Any

#: Buffers per ``pwritev`` call (Linux's IOV_MAX is 1024).
_IOV_BATCH = 512
#: Read size when hashing a whole file.
HASH_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's bytes (the content hash ingestion, the catalog and lineage
    record for every file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_at(fd: int, data: Any, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset``."""
    writev_at(fd, [data], offset)


def writev_at(fd: int, buffers: Sequence[Any], offset: int) -> int:
    """``pwritev`` every buffer, in order, from ``offset``; returns the bytes written."""
    views = [memoryview(buffer) for buffer in buffers if len(buffer)]
    total = 0
    while views:
        written = os.pwritev(fd, views[:_IOV_BATCH], offset)
        offset += written
        total += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]
    return total


def read_into(fd: int, target: memoryview, offset: int) -> None:
    """Fill ``target`` from ``fd`` at ``offset``; EOFError if the file ends first."""
    while target:
        got = os.preadv(fd, [target], offset)
        if not got:
            raise EOFError
        target = target[got:]
        offset += got


# --- getting written bytes onto the disk, and out of the page cache ---------------------
# Writes that must become durable start their writeback early, so that the fsync that must
# come finds little left to do (ingestion/diskio.py). Streams written once and read at most
# once (shares, store packs) leave the page cache as soon as they are on the disk.

#: Set to ``0`` to keep written and sent data in the page cache (for comparisons).
DROP_ENV = "ENCLAVE_DROP_BEHIND"
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4


@cache
def _sync_file_range():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux: fsync alone does the work
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def start_writeback(fd: int, offset: int = 0, nbytes: int = 0) -> None:
    """Queue ``nbytes`` at ``offset`` of ``fd`` (0: to the end) for writing; never waits
    for the disk and never fails (durability is the later fsync's job)."""
    func = _sync_file_range()
    if func is not None:
        func(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)


def drop_behind(fd: int, offset: int, nbytes: int) -> None:
    """Write ``nbytes`` at ``offset`` out (waiting for the disk) and drop them from the page
    cache: for data written once and not read again soon (or read once, from the disk).

    Cached pages of write-once streams cost twice: the memory is taken from what is worth
    caching, and every page is fresh memory, which on virtual machines that hand free
    memory back to their host faults expensively. Released right after writeback, the same
    pages serve the next megabytes. Like ``start_writeback`` it never fails.
    """
    if nbytes <= 0 or os.environ.get(DROP_ENV, "1") == "0":
        return
    func = _sync_file_range()
    if func is not None:
        func(
            fd,
            offset,
            nbytes,
            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER,
        )
    drop_cached(fd, offset, nbytes)


def drop_cached(fd: int, offset: int, nbytes: int) -> None:
    """Drop clean cached pages of a range that was read and will not be read again (a
    share once sent); dirty pages stay. Never fails."""
    if nbytes > 0 and hasattr(os, "posix_fadvise") and os.environ.get(DROP_ENV, "1") != "0":
        try:
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
