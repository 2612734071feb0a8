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
"""

from __future__ import annotations

import ctypes
import os
import sys

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
