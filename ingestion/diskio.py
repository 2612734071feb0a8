"""Getting written bytes onto the disk early, so that the fsync that must come is short.

The receivers and the encrypted store write hundreds of megabytes that have to be durable
before they are acknowledged or committed. Left alone, the kernel holds them as dirty pages
and the final ``fsync``/``syncfs`` then writes all of them while the caller waits. Starting
the writeback as each piece is written (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which
queues the I/O and returns) overlaps the disk with the network and the CPU work instead.
It makes nothing durable by itself: callers still ``fsync`` before they promise anything.
"""

from __future__ import annotations

import os
from pathlib import Path

# Shared with the provider's splitter, which writes shares the same way.
from secret_sharing.fileio import drop_behind, start_writeback

__all__ = ["drop_behind", "fdatasync", "fsync_dir", "start_writeback"]


def fdatasync(fd: int) -> None:
    """Data and the size needed to read it back, without a separate metadata flush."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # macOS
        os.fsync(fd)


def fsync_dir(path: Path | str) -> None:
    """Make a folder's entries (a new or renamed file in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
