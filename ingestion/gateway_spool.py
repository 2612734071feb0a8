"""The gateway's spool file format: append-only record files flushed before Success.

Each association appends the instances of one study to its own record file
``spool/<study key>/<unique>.rec``; every record is ``EGS1``, the payload length (8 bytes,
little endian), the CRC-32 of the payload (4 bytes), then the payload (the instance as a
PS3.10 file). ``RecordFile.append`` returns only after ``fdatasync``: an acknowledged image
is on disk, at the cost of one data flush and no new directory entry per image (the file and
its folders are flushed once, when the file is created).

A crash can leave only the record being written incomplete, at the end of the file (a failed
write is cut off again, and the file is not appended to after that); ``read_records`` stops
at the first record whose header, length or checksum does not hold, so an image that was
never acknowledged is ignored and nothing acknowledged is lost.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ingestion.diskio import fdatasync, fsync_dir

MAGIC = b"EGS1"
HEADER = struct.Struct("<4sQI")
SUFFIX = ".rec"


class RecordFile:
    """One open record file an association appends to; ``sealed`` once it may not grow."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.sealed = False
        self.records = 0
        self._fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        self._size = 0
        try:
            fsync_dir(path.parent)  # the file's entry, and the study folder's own entry
            fsync_dir(path.parent.parent)
        except BaseException:
            self.close()
            raise

    def append(self, parts: Sequence[bytes]) -> None:
        """Append one record made of ``parts`` and flush it; raises OSError on failure, after
        which the file is sealed (the caller opens a new one)."""
        if self.sealed:
            raise ValueError(f"record file {self.path.name} is sealed")
        length = sum(len(p) for p in parts)
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        chunks: list[bytes | memoryview] = [HEADER.pack(MAGIC, length, crc), *parts]
        total = HEADER.size + length
        try:
            written = 0
            while written < total:  # writev may write less than asked
                n = os.writev(self._fd, chunks)
                written += n
                chunks = _advance(chunks, n)
            fdatasync(self._fd)
        except BaseException:
            self.sealed = True
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # cut the torn record off
                fdatasync(self._fd)
            self.close()
            raise
        self._size += total
        self.records += 1

    def close(self) -> None:
        self.sealed = True
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def _advance(chunks: list[bytes | memoryview], n: int) -> list[bytes | memoryview]:
    out: list[bytes | memoryview] = []
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        out.append(memoryview(chunk)[n:] if n else chunk)
        n = 0
    return out


@dataclass(frozen=True)
class Record:
    """Where one intact record's payload lies in its file."""

    path: Path
    offset: int
    length: int
    index: int

    def read(self) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            return fh.read(self.length)


def read_records(path: Path) -> Iterator[Record]:
    """The intact records of a record file, in order; stops at the first torn one."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        index = 0
        while offset + HEADER.size <= size:
            magic, length, crc = HEADER.unpack(fh.read(HEADER.size))
            start = offset + HEADER.size
            if magic != MAGIC or start + length > size:
                return
            payload = fh.read(length)
            if zlib.crc32(payload) != crc:
                return
            yield Record(path, start, length, index)
            offset = start + length
            index += 1
