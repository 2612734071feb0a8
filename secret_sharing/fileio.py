"""Positional reads and writes that finish the job: a short read or write is legal on Linux.

Splitting writes blocks at known offsets from several threads, reconstruction reads k blocks
side by side into one buffer, unpacking and the dataset store write lists of views without
joining them first; all of them need the same loops.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

#: Buffers per ``pwritev`` call (Linux's IOV_MAX is 1024).
_IOV_BATCH = 512


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
