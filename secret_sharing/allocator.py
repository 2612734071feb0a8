"""Keep freed memory in the process: the data path allocates the same large buffers all day.

Shares, segments and HTTP bodies come in pieces of 64 KiB to 8 MiB. glibc's malloc hands
pieces above its mmap threshold (128 KiB, raised only slowly) straight back to the kernel
when they are freed, and trims the heap whenever its free top passes the trim threshold, so
the next piece of the same size is fresh memory again: every 4 KiB page of it faults when
first written. On virtual machines that return free guest memory to the host (free page
reporting, balloons) such faults are expensive, so keeping freed memory in the process saves
CPU on every piece the data path moves (figures in docs/performance.md).

The settings are glibc's own knobs (``mallopt``): pieces up to 32 MiB come from the heap,
and up to 128 MiB of free heap is kept per arena. Memory is bounded by what the process
used at its peak, which the data path bounds itself (segments in flight, backlogs). Set
``ENCLAVE_MALLOC_TUNING=0`` to leave malloc alone; elsewhere than glibc this does nothing.

For the same reason a buffer that is about to be overwritten in full need not be zeroed
first: ``uninitialized_bytearray`` skips that pass.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable
from typing import cast

#: mallopt parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2, which is 32 MiB on 64-bit.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 128 * 1024 * 1024
TUNING_ENV = "ENCLAVE_MALLOC_TUNING"

_tuned = False


def tune_allocator() -> bool:
    """Apply the settings to this process (idempotent); True if they are in force.

    Called by the ``enclave`` command line, the ingestion service and the validation pool's
    processes: each of them moves gigabytes through short-lived buffers.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get(TUNING_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, for example)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    applied = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and applied
    _tuned = applied
    return applied


@functools.cache
def _bytearray_from_size() -> Callable[[None, int], bytearray]:
    function = ctypes.pythonapi.PyByteArray_FromStringAndSize
    function.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    function.restype = ctypes.py_object
    return cast(Callable[[None, int], bytearray], function)


def uninitialized_bytearray(length: int) -> bytearray:
    """A new ``bytearray`` of ``length`` bytes whose contents are whatever the memory held.

    ``bytearray(length)`` writes zeros over every byte first, which for a buffer that is
    about to be overwritten in full (a segment decrypted into it) is a wasted pass over
    the memory, and on fresh pages the pass that faults them in. CPython's own constructor
    leaves the bytes alone when it is given no source; only use this for a buffer that is
    written in full before anything reads it, and drop it if the writer fails.
    """
    if length < 0:
        raise ValueError(f"a buffer cannot have {length} bytes")
    return _bytearray_from_size()(None, length)
