"""Serialise a dataset (file or folder tree) as a streaming POSIX.1-2001 (pax) tar.

Splitting never holds more than one segment of plaintext: headers come from
``tarfile.TarInfo.tobuf`` and file bytes are read straight into the segment buffer
with ``readinto``. The stream is exactly what ``tarfile.open(mode="w|",
format=PAX_FORMAT)`` would write for the same members (uid/gid 0, no user or group
names, integer mtimes, end-of-archive blocks, padded to 10240-byte records), so any
tar reader can unpack it. Only regular files and directories travel: a symlink,
device, socket or fifo stops the split with its path named.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from secret_sharing.allocator import uninitialized_bytearray
from secret_sharing.errors import DatasetError
from secret_sharing.format import FormatProblem, check_dataset_name

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240
_READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class DatasetSummary:
    """What a pre-pass over the dataset found; ``stream_length`` is the exact tar size."""

    name: str
    kind: str
    file_count: int
    directory_count: int
    content_bytes: int
    stream_length: int


@dataclass(frozen=True)
class _Member:
    path: Path
    arcname: str
    is_dir: bool
    size: int
    header: bytes


def _tarinfo(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.size = 0
    else:
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _check_kind(path: Path, st: os.stat_result) -> None:
    mode = st.st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = (
        "a symbolic link"
        if stat.S_ISLNK(mode)
        else "a fifo"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
        else "not a regular file"
    )
    raise DatasetError(f"{path} is {kind}; only regular files and folders can be shared")


def _arcname_part(path: Path, name: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(f"{path} has a name that is not valid UTF-8; rename it first") from None
    return name


def _members(source: Path) -> Iterator[_Member]:
    """Members in tar order: a folder before its entries, entries sorted by name.

    A generator over ``os.scandir`` so memory grows with the folder depth and the
    widest folder, not with the number of files in the dataset.
    """
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        raise DatasetError(f"{source} does not exist") from None
    _check_kind(source, st)
    root_name = _arcname_part(source, source.name)
    yield from _walk(source, root_name, st)


def _walk(path: Path, arcname: str, st: os.stat_result) -> Iterator[_Member]:
    info = _tarinfo(arcname, st)
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
    is_dir = stat.S_ISDIR(st.st_mode)
    yield _Member(path, arcname, is_dir, info.size, header)
    if not is_dir:
        return
    try:
        with os.scandir(path) as entries:
            children = sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        raise DatasetError(f"cannot list {path}: {exc.strerror}") from None
    for entry in children:
        child = path / entry.name
        child_st = entry.stat(follow_symlinks=False)
        _check_kind(child, child_st)
        yield from _walk(child, f"{arcname}/{_arcname_part(child, entry.name)}", child_st)


def padded(size: int) -> int:
    """A member's data length rounded up to whole tar blocks."""
    return -(-size // BLOCK) * BLOCK


def _stream_length(member_bytes: int) -> int:
    return -(-(member_bytes + 2 * BLOCK) // RECORD) * RECORD


def measure_dataset(source: Path) -> DatasetSummary:
    """Walk the dataset once: refuse what cannot travel, and size the tar stream."""
    source = Path(os.path.abspath(source))
    try:
        check_dataset_name(source.name)
    except FormatProblem as exc:
        raise DatasetError(f"{source}: {exc}") from None
    files = dirs = content = member_bytes = 0
    kind = "file"
    for position, member in enumerate(_members(source)):
        if member.is_dir:
            dirs += 1
            if position == 0:
                kind = "dir"
        else:
            files += 1
            content += member.size
        member_bytes += len(member.header) + padded(member.size)
    return DatasetSummary(source.name, kind, files, dirs, content, _stream_length(member_bytes))


def pack_segments(source: Path, segment_size: int) -> Iterator[bytearray]:
    """Yield the tar stream of ``source`` in segments of exactly ``segment_size`` bytes
    (the last one shorter). Each yielded buffer is fresh: the caller owns it. Buffers are
    not zero-filled first: every byte of one is written before it is yielded (the last is
    cut to what was written)."""
    source = Path(os.path.abspath(source))
    buffer = uninitialized_bytearray(segment_size)
    view = memoryview(buffer)
    filled = 0
    member_bytes = 0

    def put(data: bytes) -> Iterator[bytearray]:
        nonlocal buffer, view, filled
        offset = 0
        while offset < len(data):
            take = min(len(data) - offset, segment_size - filled)
            view[filled : filled + take] = data[offset : offset + take]
            filled += take
            offset += take
            if filled == segment_size:
                full, buffer = buffer, uninitialized_bytearray(segment_size)
                view.release()
                view = memoryview(buffer)
                filled = 0
                yield full

    for member in _members(source):
        yield from put(member.header)
        member_bytes += len(member.header)
        if member.is_dir:
            continue
        try:
            handle = open(member.path, "rb", buffering=0)
        except OSError as exc:
            raise DatasetError(f"cannot read {member.path}: {exc.strerror}") from None
        with handle:
            remaining = member.size
            while remaining:
                take = min(remaining, segment_size - filled, _READ_CHUNK)
                got = handle.readinto(view[filled : filled + take])
                if not got:
                    raise DatasetError(f"{member.path} shrank while it was being split")
                filled += got
                remaining -= got
                if filled == segment_size:
                    full, buffer = buffer, uninitialized_bytearray(segment_size)
                    view.release()
                    view = memoryview(buffer)
                    filled = 0
                    yield full
            if os.fstat(handle.fileno()).st_size != member.size:
                raise DatasetError(f"{member.path} changed size while it was being split")
        padding = padded(member.size) - member.size
        yield from put(bytes(padding))
        member_bytes += padded(member.size)
    yield from put(bytes(_stream_length(member_bytes) - member_bytes))
    if filled:
        view.release()
        del buffer[filled:]
        yield buffer
