"""Copying a request's files out of the requester's reach, safely, as root.

The airlock service runs as root and the files it copies belong to someone who may try to
trick it, so every path is walked one component at a time from a descriptor of
``~/outputs`` with ``O_NOFOLLOW`` (a symbolic link anywhere, to a dataset mount or to
``/etc/shadow``, is refused, not followed); only regular files owned by the requester are read
(a FIFO or device would block or lie); ``..`` and absolute paths elsewhere are refused; sizes
are capped before a byte is copied; and the copy is hashed as it is written, so the checks and
the release see the bytes that were copied, whatever the owner does to the original afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from enclave.errors import EnclaveError

#: Folders under ~/outputs never exported as files (the lineage records travel with the
#: files they describe; notebook checkpoints are copies).
SKIPPED_DIRS = frozenset({".lineage", ".ipynb_checkpoints"})
#: Largest lineage record read (bytes).
MAX_LINEAGE_BYTES = 16 * 1024 * 1024
_COPY_BLOCK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class StagingError(EnclaveError):
    """A requested path cannot be exported as asked (named in the message)."""


@dataclass(frozen=True)
class StagedFile:
    name: str  # relative to ~/outputs, POSIX
    path: Path  # the copy, out of the requester's reach
    size: int
    sha256: str


def relative_name(raw: str, outputs: Path) -> PurePosixPath:
    """``raw`` (``x``, ``~/outputs/x``, ``/home/u/outputs/x``) as a path relative to outputs."""
    text = str(raw).strip()
    if not text or "\0" in text:
        raise StagingError(f"{raw!r} is not a path")
    if text.startswith("~/"):
        text = text[2:]
        if text == "outputs" or text.startswith("outputs/"):
            text = text[len("outputs") :].lstrip("/")
    elif text.startswith("/"):
        prefix = str(outputs).rstrip("/") + "/"
        if text.rstrip("/") == str(outputs).rstrip("/"):
            text = ""
        elif text.startswith(prefix):
            text = text[len(prefix) :]
        else:
            raise StagingError(f"{raw} is not under {outputs}: only ~/outputs can be exported")
    rel = PurePosixPath(text or ".")
    if any(part == ".." for part in rel.parts):
        raise StagingError(f"{raw}: '..' is not allowed in an export path")
    return rel


def _open_dir(parent: int, name: str, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StagingError(
                f"{shown} is a symbolic link or not a folder: not exported"
            ) from None
        if exc.errno == errno.ENOENT:
            raise StagingError(f"{shown} does not exist") from None
        raise StagingError(f"{shown} cannot be opened: {exc.strerror}") from None


def _open_outputs(outputs: Path, uid: int) -> int:
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in outputs.parts[1:]:
            nxt = _open_dir(fd, part, str(outputs))
            os.close(fd)
            fd = nxt
        st = os.fstat(fd)
        if st.st_uid != uid:
            raise StagingError(f"{outputs} does not belong to the requester")
        return fd
    except BaseException:
        os.close(fd)
        raise


class OutputsReader:
    """Files under one user's ``~/outputs``, opened without following links."""

    def __init__(self, outputs: Path, uid: int) -> None:
        self.outputs = Path(outputs)
        self.uid = uid

    def _walk_to(self, rel: PurePosixPath) -> tuple[int, str]:
        """A descriptor of ``rel``'s parent folder and ``rel``'s last component."""
        fd = _open_outputs(self.outputs, self.uid)
        parts = [p for p in rel.parts if p != "."]
        try:
            for i, part in enumerate(parts[:-1]):
                nxt = _open_dir(fd, part, "~/outputs/" + "/".join(parts[: i + 1]))
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1] if parts else "."

    def files(self, raw: str) -> Iterator[tuple[str, int, os.stat_result]]:
        """(name, open descriptor, stat) of each regular file ``raw`` names (recursively for a
        folder). The caller closes each descriptor."""
        rel = relative_name(raw, self.outputs)
        parent, last = self._walk_to(rel)
        shown = "~/outputs" if last == "." else f"~/outputs/{rel}"
        try:
            try:
                fd = os.open(last, _FILE_FLAGS, dir_fd=parent)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise StagingError(f"{shown} is a symbolic link: not exported") from None
                if exc.errno == errno.ENOENT:
                    raise StagingError(f"{shown} does not exist") from None
                raise StagingError(f"{shown} cannot be opened: {exc.strerror}") from None
        finally:
            os.close(parent)
        base = "" if last == "." else rel.as_posix()
        yield from self._entries(fd, base, shown)

    def _entries(self, fd: int, name: str, shown: str) -> Iterator[tuple[str, int, os.stat_result]]:
        st = os.fstat(fd)
        if st.st_uid != self.uid:
            os.close(fd)
            raise StagingError(f"{shown} does not belong to the requester: not exported")
        if stat.S_ISREG(st.st_mode):
            yield name, fd, st
            return
        if not stat.S_ISDIR(st.st_mode):
            os.close(fd)
            raise StagingError(f"{shown} is not a regular file or a folder: not exported")
        try:
            entries = sorted(os.listdir(fd))
            for entry in entries:
                if entry in SKIPPED_DIRS:
                    continue
                child_name = f"{name}/{entry}" if name else entry
                child_shown = f"~/outputs/{child_name}"
                try:
                    child = os.open(entry, _FILE_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise StagingError(
                            f"{child_shown} is a symbolic link: not exported"
                        ) from None
                    raise StagingError(f"{child_shown} cannot be opened: {exc.strerror}") from None
                yield from self._entries(child, child_name, child_shown)
        finally:
            os.close(fd)

    def lineage_records(self) -> list[dict[str, Any]]:
        """The requester's lineage records (``~/outputs/.lineage/*.json``), read safely."""
        from enclave.data.lineage import LINEAGE_DIR

        records = []
        try:
            parent = _open_outputs(self.outputs, self.uid)
        except StagingError:
            return []
        try:
            try:
                folder = os.open(LINEAGE_DIR, _DIR_FLAGS, dir_fd=parent)
            except OSError:
                return []
            try:
                for entry in sorted(os.listdir(folder)):
                    if not entry.endswith(".json") or entry.startswith("."):
                        continue
                    try:
                        fd = os.open(entry, _FILE_FLAGS, dir_fd=folder)
                    except OSError:
                        continue
                    with os.fdopen(fd, "rb") as fh:
                        st = os.fstat(fh.fileno())
                        if not stat.S_ISREG(st.st_mode) or st.st_uid != self.uid:
                            continue
                        raw = fh.read(MAX_LINEAGE_BYTES + 1)
                    data = parse_lineage(raw)
                    if data is not None:
                        records.append(data)
            finally:
                os.close(folder)
        finally:
            os.close(parent)
        return records


def parse_lineage(raw: bytes) -> dict[str, Any] | None:
    """A lineage record's JSON (format ``enclave-lineage/1``), or None when ``raw`` is not one
    (too large, not JSON, another format): such a file is ignored, not an error."""
    from enclave.data.lineage import FORMAT

    if len(raw) > MAX_LINEAGE_BYTES:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return data
    return None


def stage(
    reader: OutputsReader,
    paths: list[str],
    dest: Path,
    *,
    max_file_bytes: int,
    max_request_bytes: int,
    max_files: int,
) -> list[StagedFile]:
    """Copy every file ``paths`` name into ``dest`` (created, root only), checking caps first."""
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    staged: list[StagedFile] = []
    seen: set[str] = set()
    total = 0
    for raw in paths:
        for name, fd, st in reader.files(raw):
            with os.fdopen(fd, "rb") as src:
                if name in seen:
                    continue
                seen.add(name)
                if len(seen) > max_files:
                    raise StagingError(f"the request names more than {max_files} files: split it")
                if st.st_size > max_file_bytes:
                    raise StagingError(
                        f"~/outputs/{name} is {st.st_size} bytes, over the per-file cap of "
                        f"{max_file_bytes} bytes"
                    )
                total += st.st_size
                if total > max_request_bytes:
                    raise StagingError(
                        f"the request holds more than {max_request_bytes} bytes (at "
                        f"~/outputs/{name}): split it"
                    )
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                size = 0
                with open(target, "xb") as out:
                    while block := src.read(_COPY_BLOCK):
                        size += len(block)
                        if size > max_file_bytes:
                            raise StagingError(f"~/outputs/{name} grew past the cap while copied")
                        digest.update(block)
                        out.write(block)
                os.chmod(target, 0o600)
                staged.append(StagedFile(name, target, size, digest.hexdigest()))
    if not staged:
        raise StagingError("the paths named hold no file to export")
    return staged
