"""Unpack the reconstructed tar stream straight from verified plaintext segments.

``tarfile.extractall`` was slow per member: a file object per member, copies through
1 MiB reads, then ``chmod``, ``utime`` and ``chown`` calls, all while holding the GIL the
decrypting threads wanted. The packer (``secret_sharing.packing``) writes a small
subset of POSIX.1-2001: ustar headers, with a pax ``x`` header before a member whose name
or size does not fit. This reader takes exactly that subset and refuses everything else by
name. A member is one ``open``/``writev``/``close`` from views of the segments, and its bytes
are handed to ``on_file`` while they are still in memory, so a caller can encrypt and check
them without reading the file back.

The rules are tarfile's ``data`` filter and more: only regular files and folders, every
name inside the dataset without ``..``, ``.`` or empty parts, no member written twice, file
permissions limited to ``0o755`` plus owner read/write, folders private.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from secret_sharing.errors import ShareIntegrityError
from secret_sharing.fileio import writev_at
from secret_sharing.packing import BLOCK, padded

ZERO_BLOCK = bytes(BLOCK)
#: Files up to this size are handed to ``on_file`` as views of the segments holding them;
#: larger ones only by path (the caller reads them back), so memory stays bounded.
IN_MEMORY_LIMIT = 64 * 1024 * 1024
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
# pax keys the packer may write (tarfile.TarInfo.tobuf); only path and size change a member.
_IGNORED_PAX_KEYS = frozenset(
    {"mtime", "atime", "ctime", "uid", "gid", "uname", "gname", "comment"}
)

#: ``on_file(path, relative_path, data)``: a file is complete at ``path`` (in staging);
#: ``data`` is its bytes as views of the plaintext segments, or None for a large file.
FileCallback = Callable[[Path, str, Sequence[memoryview] | None], None]


class SegmentCursor:
    """Forward reader over verified plaintext segments that hands out views, not copies."""

    def __init__(self, segments: Iterator[bytes | bytearray | memoryview]) -> None:
        self._segments = segments
        self._current = memoryview(b"")
        self._position = 0
        self.consumed = 0

    def _advance(self) -> bool:
        for segment in self._segments:
            self._current = memoryview(segment)
            self._position = 0
            if len(self._current):
                return True
        return False

    def views(self, size: int) -> Iterator[memoryview]:
        """Consecutive views totalling ``size`` bytes; EOFError if the stream ends first."""
        while size > 0:
            if self._position >= len(self._current) and not self._advance():
                raise EOFError
            end = min(len(self._current), self._position + size)
            view = self._current[self._position : end]
            self._position = end
            self.consumed += len(view)
            size -= len(view)
            yield view

    def read(self, size: int) -> bytes:
        return b"".join(self.views(size))

    def skip(self, size: int) -> None:
        for _ in self.views(size):
            pass

    def rest_is_zero(self) -> bool:
        """Consume (and so verify) everything left; True if it was all zero bytes."""
        clean = True
        while True:
            rest = self._current[self._position :]
            if clean and rest and rest.tobytes().count(0) != len(rest):
                clean = False
            self.consumed += len(rest)
            self._position = len(self._current)
            if not self._advance():
                return clean


def dataset_relative(member_name: str) -> str:
    """``NAME/a/b.dcm`` -> ``a/b.dcm``; a single-file dataset is its own name."""
    _, _, rest = member_name.partition("/")
    return rest or member_name


def _pax_records(data: bytes, where: str) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records (POSIX.1-2001 pax extended header)."""
    records: dict[str, str] = {}
    position = 0
    try:
        while position < len(data):
            space = data.index(b" ", position)
            length = int(data[position:space])
            record = data[space + 1 : position + length]
            if length <= space - position or not record.endswith(b"\n") or b"=" not in record:
                raise ValueError
            key, _, value = record[:-1].partition(b"=")
            records[key.decode("utf-8")] = value.decode("utf-8")
            position += length
    except (ValueError, UnicodeDecodeError):
        raise ShareIntegrityError(
            f"{where}: the reconstructed archive is invalid: a pax header is malformed"
        ) from None
    return records


def _member_mode(mode: int) -> int:
    """tarfile's ``data`` filter for a regular file's permissions."""
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


class _Unpacker:
    def __init__(
        self,
        cursor: SegmentCursor,
        staging_dir: Path,
        dataset_name: str,
        dataset_kind: str,
        where: str,
        on_file: FileCallback | None,
    ) -> None:
        self.cursor = cursor
        self.staging = staging_dir
        self.dataset_name = dataset_name
        self.dataset_kind = dataset_kind
        self.where = where
        self.on_file = on_file
        self.seen = 0
        self.folders: list[tuple[Path, float]] = []
        self._made: set[Path] = set()  # folders known to exist: one stat per folder, not file

    def _fail(self, problem: str) -> ShareIntegrityError:
        return ShareIntegrityError(f"{self.where}: {problem}")

    def run(self) -> None:
        pax: dict[str, str] = {}
        while True:
            raw = self.cursor.read(BLOCK)
            if raw == ZERO_BLOCK:
                if pax:
                    raise self._fail(
                        "the reconstructed archive is invalid: it ends after a pax header"
                    )
                break
            try:
                info = tarfile.TarInfo.frombuf(raw, "utf-8", "strict")
            except (tarfile.HeaderError, UnicodeDecodeError) as exc:
                raise self._fail(
                    f"the reconstructed archive is invalid: {exc or 'bad header'}"
                ) from None
            if info.type == tarfile.XHDTYPE:
                pax = self._pax(info.size)
                continue
            self._member(info, pax)
            pax = {}
        if self.seen == 0:
            raise self._fail("the archive is empty")
        for folder, mtime in reversed(self.folders):  # after their contents, as tar does
            os.utime(folder, (mtime, mtime))

    def _pax(self, size: int) -> dict[str, str]:
        if size > 1024 * 1024:
            raise self._fail("the reconstructed archive is invalid: a pax header is too long")
        records = _pax_records(self.cursor.read(size), self.where)
        self.cursor.skip(padded(size) - size)
        for key in records:
            if key not in ("path", "size") and key not in _IGNORED_PAX_KEYS:
                raise self._fail(f"the reconstructed archive uses the unsupported pax key {key!r}")
        return records

    def _member(self, info: tarfile.TarInfo, pax: dict[str, str]) -> None:
        name = pax.get("path", info.name).rstrip("/")
        size = info.size
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise self._fail(
                    "the reconstructed archive is invalid: a pax size is not a number"
                ) from None
        try:
            mtime = float(pax.get("mtime", info.mtime))
        except ValueError:
            mtime = info.mtime
        is_dir = info.type == tarfile.DIRTYPE  # frombuf turns a V7 "name/" into one
        if not (is_dir or info.type in _REGULAR):
            raise self._fail(f"archive member {name!r} is not a file or folder")
        parts = name.split("/")
        if parts[0] != self.dataset_name or any(part in ("", ".", "..") for part in parts):
            raise self._fail(f"archive member {name!r} is outside the dataset")
        if self.seen == 0 and (name != self.dataset_name or is_dir != (self.dataset_kind == "dir")):
            raise self._fail(f"archive does not start with the dataset {self.dataset_kind}")
        if self.dataset_kind == "file" and self.seen > 0:
            raise self._fail("a single-file dataset has extra archive members")
        self.seen += 1
        target = self.staging / name
        try:
            if is_dir:
                if size:
                    raise self._fail(f"archive member {name!r} is a folder with data")
                os.makedirs(target, mode=0o700, exist_ok=True)
                self.folders.append((target, mtime))
                return
            self._file(target, name, size, _member_mode(info.mode), mtime)
        except (OSError, ValueError) as exc:
            problem = getattr(exc, "strerror", None) or str(exc)
            if isinstance(exc, FileExistsError):
                problem = "it appears twice"
            raise self._fail(f"cannot unpack archive member {name!r}: {problem}") from None

    def _file(self, target: Path, name: str, size: int, mode: int, mtime: float) -> None:
        parent = target.parent
        if parent not in self._made:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            self._made.add(parent)
        fd = os.open(target, _OPEN_FLAGS, mode)
        # Written a segment's view at a time, so that without a caller who wants the bytes
        # a segment is let go as soon as it is written (fewer buffers alive, fewer fresh
        # pages to fault in).
        keep = self.on_file is not None and size <= IN_MEMORY_LIMIT
        kept: list[memoryview] = []
        try:
            written = 0
            for view in self.cursor.views(size):
                written += writev_at(fd, [view], written)
                if keep:
                    kept.append(view)
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        self.cursor.skip(padded(size) - size)
        if self.on_file is not None:
            self.on_file(target, dataset_relative(name), kept if keep else None)


def unpack_segments(
    cursor: SegmentCursor,
    staging_dir: Path,
    dataset_name: str,
    dataset_kind: str,
    where: str,
    on_file: FileCallback | None = None,
) -> None:
    """Unpack the tar stream under ``staging_dir`` (a fresh, private folder), announcing each
    regular file to ``on_file`` once it is written. Raises ShareIntegrityError naming the
    problem for anything the packer would not have written."""
    try:
        _Unpacker(cursor, staging_dir, dataset_name, dataset_kind, where, on_file).run()
    except EOFError:
        raise ShareIntegrityError(f"{where}: the reconstructed archive ends early") from None
