"""Getting written bytes onto the disk early, so that the fsync that must come is short.

The receivers and the encrypted store write hundreds of megabytes that have to be durable
before they are acknowledged or committed. Left alone, the kernel holds them as dirty pages
and the final ``fsync``/``syncfs`` then writes all of them while the caller waits. Starting
the writeback as each piece is written (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which
queues the I/O and returns) overlaps the disk with the network and the CPU work instead.
It makes nothing durable by itself: callers still ``fsync`` before they promise anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4


@cache
def _sync_file_range():  # noqa: ANN202 - a ctypes function or None
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


def fdatasync(fd: int) -> None:
    """Data and the size needed to read it back, without a separate metadata flush."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # macOS
        os.fsync(fd)


def drop_behind(fd: int, offset: int, nbytes: int) -> None:
    """Write ``nbytes`` at ``offset`` out (waiting for the disk) and drop them from the page
    cache: for data written once and not read again soon (or read once, from the disk).

    Cached pages of write-once streams cost twice: the memory is taken from what is worth
    caching, and every page is fresh memory, which on virtual machines that hand free
    memory back to their host faults expensively. Released right after writeback, the same
    pages serve the next megabytes. Like ``start_writeback`` it never fails.
    """
    if nbytes <= 0 or os.environ.get("ENCLAVE_DROP_BEHIND", "1") == "0":
        return
    func = _sync_file_range()
    if func is not None:
        func(
            fd,
            offset,
            nbytes,
            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER,
        )
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
