"""Receiving a request's files uploaded from a session, into the airlock's own staging area.

Where the airlock cannot read homes (Kubernetes: each home is a volume of its own user pod),
``enclave airlock submit`` in the session uploads the files of a draft request, and the lineage
records of the models among them, and then submits it. This module receives them, in
``<state>/airlock/requests/<id>/upload/`` (the airlock's, root only):

* a name is normalised (``./a//b`` is ``a/b``) and refused if it could leave the request's
  folder or be something else than a plain name: ``..``, absolute, backslashes, NUL or other
  control characters, a reserved folder (``.lineage``); names are made by the service, never
  resolved through anything the requester made, so there is no link to follow;
* the body is read in blocks as it arrives (bounded memory), counted against the per-file and
  per-request caps while it is received (the upload stops at the first byte over a cap, and a
  declared ``Content-Length`` over a cap is refused before a byte is read), and hashed as it is
  written; the service's SHA-256 must be the one the client sent;
* only a complete upload with the right hash is renamed into the request: a dropped
  connection, a cap or a mismatch leaves nothing there, and sending the file again completes it.

Submitting stages a round by linking the received files into ``requests/<id>/<round>/``, the
folder the one-machine path copies into: checks, review and release are the same code. A file
uploaded again replaces the received one by a rename, never in place, so a staged round keeps
the bytes it was checked with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from enclave.airlock.files import (
    MAX_LINEAGE_BYTES,
    SKIPPED_DIRS,
    StagedFile,
    StagingError,
    parse_lineage,
    relative_name,
)


class FileSource(StrEnum):
    """Where the airlock takes a request's files from: one setting per deployment."""

    #: One machine: the airlock (root) copies them from the requester's ``~/outputs``.
    HOME = "home"
    #: Kubernetes: the requester's session uploads them; the airlock reads no home.
    UPLOAD = "upload"


class UploadError(StagingError):
    """An upload that is refused (the message names the file and why); ``status`` is the HTTP
    status the service answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


#: HTTP status of an upload over a cap.
TOO_LARGE = 413
#: Longest name of an uploaded file (characters).
MAX_NAME = 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
UPLOAD_DIR = "upload"
_INDEX = "index.json"


@dataclass(frozen=True)
class Caps:
    """What one request may hold."""

    max_file_bytes: int
    max_request_bytes: int
    max_files: int


def normalise_name(raw: str) -> str:
    """``raw`` as a relative POSIX name under ``~/outputs`` (``./a//b`` -> ``a/b``), or an
    ``UploadError`` naming why it cannot be one."""
    if not isinstance(raw, str) or not raw.strip():
        raise UploadError("an uploaded file needs a name")
    shown = repr(raw[:200])
    if len(raw) > MAX_NAME:
        raise UploadError(f"{shown}: a name is at most {MAX_NAME} characters")
    if _CONTROL.search(raw) or "\\" in raw:
        raise UploadError(f"{shown}: control characters and backslashes are not allowed in a name")
    if raw.startswith("/") or raw.startswith("~"):
        raise UploadError(f"{shown}: an absolute name; send names relative to ~/outputs")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UploadError(f"{shown}: '..' is not allowed in a name")
    if not parts:
        raise UploadError(f"{shown} names no file")
    if parts[0] in SKIPPED_DIRS:
        raise UploadError(f"{shown}: {parts[0]}/ is not exported as files")
    return "/".join(parts)


def check_sha256(raw: str | None) -> str:
    value = (raw or "").strip().lower()
    if not _HEX64.fullmatch(value):
        raise UploadError("the upload needs its SHA-256 (64 hex digits) in X-Content-SHA256")
    return value


class UploadArea:
    """One request's received files: ``files/NAME``, ``lineage/NAME.json``, the ``index.json``
    of the files (name -> size and SHA-256), and ``.partial/`` for uploads under way."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files = self.root / "files"
        self.lineage = self.root / "lineage"
        self.partial = self.root / ".partial"

    def _make(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for path in (self.root, folder):
            os.chmod(path, 0o700)

    def index(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.root / _INDEX).read_text())
        except FileNotFoundError:
            return {}
        return dict(data)

    def _write_index(self, index: dict[str, dict[str, Any]]) -> None:
        tmp = self.root / f".{_INDEX}.{secrets.token_hex(4)}"
        tmp.write_text(json.dumps(index, sort_keys=True))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.root / _INDEX)

    def clear_partial(self) -> None:
        """Forget uploads a crash interrupted."""
        shutil.rmtree(self.partial, ignore_errors=True)

    async def receive(
        self,
        raw_name: str,
        chunks: AsyncIterator[bytes],
        sha256: str | None,
        caps: Caps,
        *,
        length: int | None = None,
        in_flight: dict[int, int] | None = None,
        key: int = 0,
    ) -> StagedFile:
        """Receive one file; it is in the request only once it is whole with the sent hash.
        ``in_flight`` (request -> bytes being received) counts concurrent uploads of a request
        against its cap."""
        name = normalise_name(raw_name)
        declared = check_sha256(sha256)
        index = self.index()
        for other in index:
            if other.startswith(name + "/") or name.startswith(other + "/"):
                raise UploadError(f"{name}: {other} was uploaded already and one holds the other")
        if name not in index and len(index) >= caps.max_files:
            raise UploadError(
                f"{name}: the request holds {caps.max_files} files already, the most it may",
                TOO_LARGE,
            )
        committed = sum(int(e["size"]) for n, e in index.items() if n != name)
        if length is not None:
            if length > caps.max_file_bytes:
                raise UploadError(
                    f"{name} is {length} bytes, over the per-file cap of "
                    f"{caps.max_file_bytes} bytes",
                    TOO_LARGE,
                )
            if committed + length > caps.max_request_bytes:
                raise UploadError(
                    f"{name}: with it the request would hold {committed + length} bytes, over "
                    f"the per-request cap of {caps.max_request_bytes} bytes: split it",
                    TOO_LARGE,
                )
        flying = in_flight if in_flight is not None else {}
        self._make(self.partial)
        tmp = self.partial / secrets.token_hex(8)
        digest = hashlib.sha256()
        size = 0
        flying[key] = flying.get(key, 0)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    flying[key] += len(chunk)
                    if size > caps.max_file_bytes:
                        raise UploadError(
                            f"{name} is over the per-file cap of {caps.max_file_bytes} bytes",
                            TOO_LARGE,
                        )
                    if committed + flying[key] > caps.max_request_bytes:
                        raise UploadError(
                            f"{name}: the request is over the per-request cap of "
                            f"{caps.max_request_bytes} bytes: split it",
                            TOO_LARGE,
                        )
                    digest.update(chunk)
                    out.write(chunk)
            if length is not None and size != length:
                raise UploadError(f"{name}: {size} of {length} bytes arrived; send it again")
            got = digest.hexdigest()
            if got != declared:
                raise UploadError(
                    f"{name}: the bytes received have SHA-256 {got[:16]}…, not the "
                    f"{declared[:16]}… sent with them; send it again"
                )
            target = self.files / name
            self._make(self.files)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            index = self.index()
            index[name] = {"size": size, "sha256": got}
            self._write_index(index)
            return StagedFile(name, target, size, got)
        finally:
            flying[key] -= size
            if not flying[key]:
                del flying[key]
            tmp.unlink(missing_ok=True)

    def receive_lineage(self, raw_name: str, raw: bytes) -> str:
        """Keep one lineage record (``enclave-lineage/1`` JSON) of this request's files."""
        name = raw_name.strip()
        if "/" in name or "\\" in name or _CONTROL.search(name) or not name.endswith(".json"):
            raise UploadError(f"{raw_name!r}: a lineage record is one file name ending .json")
        if name.startswith("."):
            raise UploadError(f"{raw_name!r}: a lineage record's name cannot start with '.'")
        if len(raw) > MAX_LINEAGE_BYTES:
            raise UploadError(
                f"{name} is over the {MAX_LINEAGE_BYTES} bytes a lineage record may hold",
                TOO_LARGE,
            )
        if parse_lineage(raw) is None:
            raise UploadError(f"{name} is not a lineage record (JSON, format enclave-lineage/1)")
        self._make(self.lineage)
        tmp = self.lineage / f".{secrets.token_hex(8)}"
        tmp.write_bytes(raw)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.lineage / name)
        return name

    def lineage_records(self) -> list[dict[str, Any]]:
        records = []
        if self.lineage.is_dir():
            for path in sorted(self.lineage.glob("[!.]*.json")):
                record = parse_lineage(path.read_bytes())
                if record is not None:
                    records.append(record)
        return records

    def stage(self, paths: Sequence[str], dest: Path, caps: Caps) -> list[StagedFile]:
        """Link the received files that ``paths`` name (a file, or a folder's files) into
        ``dest``; every path must name at least one received file."""
        index = self.index()
        chosen: dict[str, dict[str, Any]] = {}
        for raw in paths:
            rel = relative_name(raw, Path("/nonexistent/outputs"))
            prefix = "" if rel == PurePosixPath(".") else rel.as_posix()
            found = {
                n: e
                for n, e in index.items()
                if not prefix or n == prefix or n.startswith(prefix + "/")
            }
            if not found:
                raise StagingError(
                    f"~/outputs/{prefix} was not uploaded: send it with `enclave airlock "
                    "submit` from the session"
                )
            chosen.update(found)
        if len(chosen) > caps.max_files:
            raise StagingError(f"the request names more than {caps.max_files} files: split it")
        total = sum(int(e["size"]) for e in chosen.values())
        if total > caps.max_request_bytes:
            raise StagingError(
                f"the request holds more than {caps.max_request_bytes} bytes: split it"
            )
        dest.mkdir(parents=True, exist_ok=True)
        os.chmod(dest, 0o700)
        staged = []
        for name in sorted(chosen):
            entry = chosen[name]
            source = self.files / name
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)
            if target.stat().st_size != int(entry["size"]):
                raise StagingError(f"~/outputs/{name}: the received copy changed size")
            staged.append(StagedFile(name, target, int(entry["size"]), str(entry["sha256"])))
        return staged
