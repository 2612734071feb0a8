"""The encrypted dataset store: every cataloged dataset version, encrypted at rest.

Format (``enclave-store/2``), one directory per stored version::

    store/<store id>/
      store.json          plaintext facts only: format, store id, cipher, counts (no file names)
      index.enc           encrypted JSON list of files: path, object number, size, sha256, and
                          where the object lies (pack number, offset, length)
      packs/000001.pack   encrypted objects, one per file, back to back (names leak nothing)

Each version has its own fresh 32-byte data key, kept only wrapped by the enclave master key
(``MasterKey.wrap(data_key, context=b"enclave-store/1:" + store id)``); the catalog holds the
wrapped key, the store never holds it in the clear.

An object is ``MAGIC`` followed by segments of at most ``segment_size`` plaintext bytes (64 KiB
since the decrypting mounts, which read any segment on its own; 4 MiB before: ``store.json``
says which),
each ``u32 ciphertext length | u8 flags | AES-256-GCM ciphertext+tag``. The nonce is
``u32 object number | u64 segment index`` (unique under a per-version key, so no randomness is
drawn per segment); the associated data binds the store id, the file's path, the segment index
and the last-segment flag. Reordered, swapped, truncated or extended segments and objects
moved between files or versions therefore fail authentication instead of decrypting to
something else.  An empty file is one empty, last segment.

Objects are packed into files of about ``PACK_BYTES``: a dataset of thousands of slices used to
be thousands of object files, and creating a file on the store's filesystem cost more CPU than
encrypting and writing its half megabyte. The encryption is exactly ``enclave-store/1``'s
(whose versions, one file per object under ``objects/000001.enc``, are still read), so the
key-wrapping context and associated data keep that label.

Writes are atomic: a version is written under ``store/.tmp-*`` and renamed into place only when
every object is on disk, so a crash leaves either nothing or a complete version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import struct
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ingestion.content_index import ChunkHasher
from ingestion.diskio import drop_behind, fdatasync, fsync_dir, start_writeback
from secret_sharing.errors import EnclaveError
from secret_sharing.fileio import writev_at

FORMAT = "enclave-store/2"
#: Formats this module reads; the crypto of both carries the first's label.
READABLE_FORMATS = ("enclave-store/1", FORMAT)
CRYPTO_LABEL = "enclave-store/1"
#: A new pack file starts once the current one holds this many bytes.
PACK_BYTES = 256 * 1024 * 1024
MAGIC = b"ENCSTOR1"
#: Plaintext bytes a segment holds: the unit a random read decrypts and authenticates, so
#: small enough that reading 64 KiB anywhere in a file decrypts little more than 64 KiB.
SEGMENT_SIZE = 64 * 1024
INDEX_OBJECT = 0
_SEG_HEADER = struct.Struct(">IB")
_TAG_LEN = 16
_FLAG_LAST = 1


class StoreError(EnclaveError):
    """A stored dataset version is missing, damaged, or the key does not open it."""


class KeyWrapper(Protocol):
    """What the store needs from the enclave master key (``enclave.custody.MasterKey``)."""

    def wrap(self, data_key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, blob: bytes, context: bytes) -> bytes: ...


@dataclass(frozen=True)
class StoredFile:
    path: str
    object: int
    size: int
    sha256: str
    pack: int | None = None  # None: an enclave-store/1 object file of its own
    offset: int = 0
    length: int = 0


@dataclass(frozen=True)
class StoredVersion:
    """Where a version lies and its wrapped key: what the catalog keeps about a stored version,
    with the chunk digests of its files (``ingestion.content_index``) for the airlock's index."""

    store_location: str
    wrapped_key: bytes
    store_id: str
    size_bytes: int
    file_count: int
    chunk_digests: dict[str, list[bytes]] = field(default_factory=dict, repr=False)


def key_context(store_id: str) -> bytes:
    return f"{CRYPTO_LABEL}:{store_id}".encode()


def _nonce(obj: int, segment: int) -> bytes:
    return struct.pack(">IQ", obj, segment)


def _aad(store_id: str, path: str, segment: int, last: bool) -> bytes:
    return b"\0".join(
        [
            CRYPTO_LABEL.encode(),
            store_id.encode(),
            path.encode("utf-8"),
            struct.pack(">QB", segment, last),
        ]
    )


def _encrypt_chunks(
    aead: AESGCM, store_id: str, obj: int, path: str, chunks: Iterator[Any]
) -> Iterator[bytes]:
    """The object's bytes (``MAGIC``, then one record per plaintext chunk), flagging the last
    chunk; no chunks at all is one empty, last segment."""
    yield MAGIC
    index = 0
    chunk: Any = next(chunks, b"")
    while True:
        following = next(chunks, None)
        last = following is None
        ct = aead.encrypt(_nonce(obj, index), chunk, _aad(store_id, path, index, last))
        yield _SEG_HEADER.pack(len(ct), _FLAG_LAST if last else 0)
        yield ct
        if last:
            return
        chunk = following
        index += 1


def _memory_chunks(data: Sequence[Any], seg_size: int) -> Iterator[Any]:
    """``data`` (views of a file's bytes) in chunks of ``seg_size``: a view where a chunk
    lies within one piece, joined bytes only where it spans pieces."""
    pending: list[Any] = []
    pending_size = 0
    for piece in data:
        piece = memoryview(piece)
        while piece:
            take = min(len(piece), seg_size - pending_size)
            if not pending and take == seg_size:
                yield piece[:take]
            else:
                pending.append(piece[:take])
                pending_size += take
                if pending_size == seg_size:
                    yield b"".join(pending)
                    pending, pending_size = [], 0
            piece = piece[take:]
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


def _encrypt_stream(
    aead: AESGCM,
    store_id: str,
    obj: int,
    path: str,
    src: BinaryIO,
    dst: BinaryIO,
    seg_size: int,
    *,
    hashed: bool = True,
) -> tuple[int, str]:
    """Encrypt ``src`` into ``dst`` segment by segment; return plaintext size and sha256
    (``""`` when not ``hashed``: the caller already knows it)."""
    digest = hashlib.sha256() if hashed else None
    size = 0

    def chunks() -> Iterator[bytes]:
        nonlocal size
        while chunk := src.read(seg_size):
            size += len(chunk)
            if digest is not None:
                digest.update(chunk)
            yield chunk

    for record in _encrypt_chunks(aead, store_id, obj, path, chunks()):
        dst.write(record)
    return size, digest.hexdigest() if digest is not None else ""


def _decrypt_segments(
    aead: AESGCM, store_id: str, obj: int, path: str, src: BinaryIO, what: str
) -> Iterator[bytes]:
    if src.read(len(MAGIC)) != MAGIC:
        raise StoreError(f"{what} is not an enclave store object")
    index = 0
    while True:
        header = src.read(_SEG_HEADER.size)
        if len(header) < _SEG_HEADER.size:
            raise StoreError(f"{what} is truncated (no final segment)")
        length, flags = _SEG_HEADER.unpack(header)
        ct = src.read(length)
        last = bool(flags & _FLAG_LAST)
        if len(ct) != length:
            raise StoreError(f"{what} is truncated in segment {index}")
        try:
            yield aead.decrypt(_nonce(obj, index), ct, _aad(store_id, path, index, last))
        except InvalidTag:
            raise StoreError(
                f"{what} segment {index} failed authentication (damaged, moved or wrong key)"
            ) from None
        if last:
            if src.read(1):
                raise StoreError(f"{what} has data after its final segment")
            return
        index += 1


def _flush_to_disk(folder: Path) -> None:
    """Make every file under ``folder`` durable: ``fdatasync`` each, concurrently.

    Packs had their writeback started as objects were written, so each flush mostly waits for
    the journal, and concurrent flushes share journal commits. Unlike ``syncfs`` it does not
    also flush whatever else is dirty on the filesystem (another transfer's staging, shares
    being received). A version holds a handful of files (its packs, index and metadata): one
    short-lived thread per file beyond the first, which this thread flushes itself, rather
    than a thread pool built for every commit.
    """
    paths = [p for p in folder.rglob("*") if p.is_file()]
    errors: list[BaseException] = []

    def flush(path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                fdatasync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:  # raised in the committing thread below
            errors.append(exc)

    helpers = [
        threading.Thread(target=flush, args=(path,), name="store-flush", daemon=True)
        for path in paths[1:]
    ]
    for helper in helpers:
        helper.start()
    if paths:
        flush(paths[0])
    for helper in helpers:
        helper.join()
    if errors:
        raise errors[0]


def object_length(size: int, seg_size: int) -> int:
    """Bytes of the encrypted object of a ``size``-byte file: known before encrypting, so a
    writer can reserve its place in a pack first."""
    records = max(1, -(-size // seg_size))
    return len(MAGIC) + size + records * (_SEG_HEADER.size + _TAG_LEN)


def _finish_pack(fd: int | None) -> None:
    """A full pack is written once and read later, by researchers: wait for it to reach the
    disk and drop it from the page cache (outside the lock, so other writers go on)."""
    if fd is not None:
        drop_behind(fd, 0, PACK_BYTES)
        os.close(fd)


class _Packs:
    """Pack files of one version being written: places are reserved under a lock and filled
    with ``pwritev``, so several threads write objects at once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self._lock = threading.Lock()
        self._number = 0
        self._fd: int | None = None
        self._end = 0
        self._writers: dict[int, int] = {}  # pack number -> objects being written
        self._retired: dict[int, int] = {}  # full packs still being written: number -> fd

    def reserve(self, length: int) -> tuple[int, int, int]:
        """(pack number, its fd, offset) for an object of ``length`` bytes; ``release`` after."""
        finished = None
        with self._lock:
            if self._fd is None or (self._end and self._end + length > PACK_BYTES):
                finished = self._next_pack()
            offset = self._end
            self._end += length
            self._writers[self._number] = self._writers.get(self._number, 0) + 1
            reserved = self._number, self._fd, offset
        _finish_pack(finished)
        return reserved  # type: ignore[return-value]

    def release(self, number: int) -> None:
        finished = None
        with self._lock:
            self._writers[number] -= 1
            if not self._writers[number] and number in self._retired:
                finished = self._retired.pop(number)
        _finish_pack(finished)

    def _next_pack(self) -> int | None:
        """Open the next pack; returns the previous one's fd if no object is still being
        written into it (the caller finishes it outside the lock)."""
        finished = None
        if self._fd is not None:
            if self._writers.get(self._number):
                self._retired[self._number] = self._fd
            else:
                finished = self._fd
        self._number += 1
        path = self.folder / f"{self._number:06d}.pack"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._end = 0
        return finished

    def close(self) -> None:
        with self._lock:
            for fd in [*self._retired.values(), *([self._fd] if self._fd is not None else [])]:
                os.close(fd)
            self._retired.clear()
            self._fd = None


class VersionWriter:
    """Builds one stored version file by file; nothing is visible until ``commit``.

    Lets the worker encrypt a dataset while it is being reconstructed (``add_data`` from
    memory, ``add_file`` from disk, from several threads), add files validation derived
    afterwards, then commit or abort.
    """

    def __init__(
        self,
        store_root: Path,
        master_key: KeyWrapper,
        *,
        name_hint: str,
        segment_size: int = SEGMENT_SIZE,
    ) -> None:
        self.store_root = Path(store_root)
        self.store_root.mkdir(parents=True, exist_ok=True)
        self.master_key = master_key
        self.segment_size = segment_size
        # A random suffix keeps a retried attempt from overwriting a cataloged version.
        self.store_id = f"{name_hint}-{uuid.uuid4().hex[:8]}"
        self.tmp = self.store_root / f".tmp-{self.store_id}"
        self.final = self.store_root / self.store_id
        self._data_key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(self._data_key)
        self._files: dict[str, StoredFile] = {}
        self._reserved: set[str] = set()  # paths given an object number, stored or not yet
        self._chunks: dict[str, list[bytes]] = {}  # path -> digests of its aligned chunks
        self._lock = threading.Lock()
        self.tmp.mkdir(parents=True)
        self._packs = _Packs(self.tmp / "packs")

    def add_tree(
        self,
        source: Path,
        *,
        exclude: Callable[[str], bool] | None = None,
        progress: Callable[[int], None] | None = None,
        hashed: bool = True,
    ) -> int:
        """Encrypt every regular file under ``source`` not added yet; returns how many.

        ``hashed=False`` skips the SHA-256 when the caller reads the same files anyway (the
        worker's validation does) and hands the digests to ``commit``: one hash per byte.
        """
        source = Path(source)
        added = 0
        for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(source).as_posix()
            if rel in self._reserved or (exclude and exclude(rel)):
                continue
            stored = self.add_file(path, rel, hashed=hashed)
            added += 1
            if progress:
                progress(stored.size)
        return added

    def add_file(self, path: Path, rel: str, *, hashed: bool = True) -> StoredFile:
        """Encrypt one file from disk as ``rel``, streaming it segment by segment."""
        number = self._reserve(rel)
        digest = hashlib.sha256() if hashed else None
        hasher = ChunkHasher()
        with open(path, "rb") as src:
            size = os.fstat(src.fileno()).st_size

            def chunks() -> Iterator[bytes]:
                left = size
                while left > 0:
                    chunk = src.read(min(self.segment_size, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    if digest is not None:
                        digest.update(chunk)
                    hasher.update(chunk)
                    yield chunk

            records = _encrypt_chunks(self._aead, self.store_id, number, rel, chunks())
            stored = self._write_object(rel, number, size, records)
        return self._stored(stored, digest, hasher)

    def add_data(self, rel: str, data: Sequence[Any], *, hashed: bool = True) -> StoredFile:
        """Encrypt one file whose bytes are already in memory (``data``: buffers, e.g. views of
        reconstruction's decrypted segments), without reading it back from staging."""
        number = self._reserve(rel)
        digest = hashlib.sha256() if hashed else None
        hasher = ChunkHasher()
        size = 0
        for piece in data:
            size += len(piece)
            if digest is not None:
                digest.update(piece)
            hasher.update(piece)
        chunks = _memory_chunks(data, self.segment_size)
        records = _encrypt_chunks(self._aead, self.store_id, number, rel, chunks)
        return self._stored(self._write_object(rel, number, size, records), digest, hasher)

    def _write_object(
        self, rel: str, number: int, size: int, records: Iterator[bytes]
    ) -> StoredFile:
        """Reserve the object's place in a pack and write its records there as they come."""
        length = object_length(size, self.segment_size)
        pack, fd, offset = self._packs.reserve(length)
        try:
            written = 0
            batch: list[bytes] = []
            batch_bytes = 0
            for record in records:
                batch.append(record)
                batch_bytes += len(record)
                if batch_bytes >= self.segment_size:
                    writev_at(fd, batch, offset + written)
                    written += batch_bytes
                    batch, batch_bytes = [], 0
            writev_at(fd, batch, offset + written)
            written += batch_bytes
            if written != length:
                raise StoreError(f"{rel} changed size while it was being stored")
            # The disk writes while the next files are encrypted; commit's flush then finds
            # little left to do.
            start_writeback(fd, offset, length)
        finally:
            self._packs.release(pack)
        return StoredFile(rel, number, size, "", pack, offset, length)

    def _stored(self, stored: StoredFile, digest: Any, hasher: ChunkHasher) -> StoredFile:
        if digest is not None:
            stored = dataclasses.replace(stored, sha256=digest.hexdigest())
        with self._lock:
            self._files[stored.path] = stored
            self._chunks[stored.path] = hasher.digests
        return stored

    def _reserve(self, rel: str) -> int:
        with self._lock:
            if rel in self._reserved:
                raise StoreError(f"{rel} was added to the stored version twice")
            self._reserved.add(rel)
            return len(self._reserved)

    def commit(self, hashes: dict[str, str] | None = None) -> StoredVersion:
        """Write the index, fsync, and rename the version into place atomically.

        ``hashes`` (path -> SHA-256 hex) supplies the digests of files added unhashed; the
        store checks them on every read, so they bind it to the bytes that were validated.
        """
        try:
            self._packs.close()
            for path, entry in list(self._files.items()):
                if not entry.sha256:
                    sha = (hashes or {}).get(path, "")
                    if len(sha) != 64:
                        raise StoreError(f"no SHA-256 for {path}: it was added unhashed")
                    self._files[path] = dataclasses.replace(entry, sha256=sha)
            files = sorted(self._files.values(), key=lambda f: f.path)
            index = json.dumps([f.__dict__ for f in files]).encode()
            with open(self.tmp / "index.enc", "wb") as dst:
                _encrypt_stream(
                    self._aead,
                    self.store_id,
                    INDEX_OBJECT,
                    "",
                    io.BytesIO(index),
                    dst,
                    self.segment_size,
                )
            size_bytes = sum(f.size for f in files)
            meta = {
                "format": FORMAT,
                "store_id": self.store_id,
                "cipher": "AES-256-GCM",
                "segment_size": self.segment_size,
                "files": len(files),
                "size_bytes": size_bytes,
            }
            (self.tmp / "store.json").write_text(json.dumps(meta, indent=2))
            _flush_to_disk(self.tmp)
            fsync_dir(self.tmp / "packs")
            fsync_dir(self.tmp)
            os.rename(self.tmp, self.final)
            fsync_dir(self.store_root)
        except BaseException:
            self.abort()
            raise
        wrapped = self.master_key.wrap(self._data_key, key_context(self.store_id))
        return StoredVersion(
            str(self.final), wrapped, self.store_id, size_bytes, len(files), dict(self._chunks)
        )

    def abort(self) -> None:
        self._packs.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_version(
    source: Path,
    store_root: Path,
    master_key: KeyWrapper,
    *,
    name_hint: str,
    segment_size: int = SEGMENT_SIZE,
    progress: Callable[[int], None] | None = None,
) -> StoredVersion:
    """Encrypt the dataset folder ``source`` into a new version under ``store_root``.

    ``name_hint`` (the transfer id) prefixes the store id.
    """
    writer = VersionWriter(store_root, master_key, name_hint=name_hint, segment_size=segment_size)
    try:
        writer.add_tree(source, progress=progress)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def delete_version(store_location: str | Path) -> None:
    shutil.rmtree(store_location, ignore_errors=True)


def clean_temporary(store_root: Path) -> list[Path]:
    """Remove half-written versions left by a crash (they were never cataloged)."""
    removed = []
    if Path(store_root).is_dir():
        for tmp in Path(store_root).glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def remove_unreferenced(store_root: Path, referenced: set[str]) -> list[Path]:
    """Remove complete versions no catalog entry points to.

    The worker renames a version into place and then catalogs it in one transaction; a
    crash between the two leaves an encrypted folder nobody can decrypt (its wrapped key was
    only in memory). The retry writes a fresh one, so the worker clears these at start,
    before it processes anything.
    """
    removed = []
    keep = {Path(location).resolve() for location in referenced}
    root = Path(store_root)
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if (entry / "store.json").is_file() and entry.resolve() not in keep:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _location_and_key(version: Any) -> tuple[Path, bytes]:
    try:
        return Path(version.store_location), bytes(version.wrapped_key)
    except AttributeError:
        raise StoreError(
            "a stored version needs store_location and wrapped_key (a catalog DatasetVersion)"
        ) from None


class StoredDataset:
    """An opened stored version: list its files and stream any of them, decrypted."""

    def __init__(self, location: Path, data_key: bytes) -> None:
        """Open the version at ``location`` with its (unwrapped) data key; ``open_version``
        unwraps it with the master key first."""
        self.location = Path(location)
        self.meta = read_meta(self.location)
        self.store_id: str = self.meta["store_id"]
        self.data_key = data_key
        self._aead = AESGCM(data_key)
        with open(self.location / "index.enc", "rb") as src:
            raw = b"".join(
                _decrypt_segments(
                    self._aead, self.store_id, INDEX_OBJECT, "", src, f"{self.store_id} index"
                )
            )
        self.files: dict[str, StoredFile] = {f["path"]: StoredFile(**f) for f in json.loads(raw)}

    def object_span(self, path: str) -> tuple[StoredFile, Path, int, int | None]:
        """Where ``path``'s object lies: its entry, the file holding it, the offset there and
        its length (None for an ``enclave-store/1`` object, which is its whole file)."""
        try:
            entry = self.files[path]
        except KeyError:
            raise StoreError(f"{path} is not in stored version {self.store_id}") from None
        if entry.pack is None:  # enclave-store/1: one file per object
            return entry, self.location / "objects" / f"{entry.object:06d}.enc", 0, None
        return entry, self.location / "packs" / f"{entry.pack:06d}.pack", entry.offset, entry.length

    def iter_bytes(self, path: str) -> Iterator[bytes]:
        """Stream one file's plaintext, segment by segment, checking its sha256 at the end."""
        entry, obj, offset, length = self.object_span(path)
        digest = hashlib.sha256()
        window = None if length is None else (offset, length)
        with open(obj, "rb", buffering=0) as raw:
            src: Any = raw if window is None else _Window(raw, *window)
            for chunk in _decrypt_segments(
                self._aead, self.store_id, entry.object, path, src, f"{path} ({obj.name})"
            ):
                digest.update(chunk)
                yield chunk
        if digest.hexdigest() != entry.sha256:
            raise StoreError(f"{path} in stored version {self.store_id} does not match its hash")

    @property
    def segment_size(self) -> int:
        """Plaintext bytes per segment of this version's objects (``store.json``; versions
        written before it was recorded used ``4 MiB``)."""
        return int(self.meta.get("segment_size") or 4 * 1024 * 1024)

    def ranges(self, path: str) -> RangeReader:
        """Random access to one file: each read decrypts and authenticates only the segments
        it touches (the decrypting mounts, ``enclave.datafs``)."""
        entry, obj, base, length = self.object_span(path)
        if length is None:
            length = obj.stat().st_size
        return RangeReader(self, entry, obj, base, length)

    def open(self, path: str) -> BinaryIO:
        """A read-only file object over one decrypted file (for pydicom, pandas, nibabel)."""
        return io.BufferedReader(_SegmentReader(self.iter_bytes(path)), buffer_size=1 << 20)

    def read_bytes(self, path: str) -> bytes:
        return b"".join(self.iter_bytes(path))


# What a range read that meets a damaged store says; the native filesystem process
# (``enclave.datafs.nativefs``) reports its faults in the same words.


def failed_authentication(path: str, object_name: str, segment: int) -> str:
    return f"{path} ({object_name}) segment {segment} failed authentication (damaged, moved or wrong key)"


def wrong_segment(path: str, object_name: str, segment: int) -> str:
    return f"{path} ({object_name}) segment {segment} has the wrong length or flags (damaged store)"


def truncated(path: str, object_name: str) -> str:
    return f"{path} ({object_name}) is truncated"


def wrong_object_length(entry: StoredFile, store_id: str, length: int, expected: int) -> str:
    return (
        f"{entry.path} in stored version {store_id}: its object is {length} bytes, "
        f"{expected} expected for {entry.size} bytes of plaintext (damaged store)"
    )


class RangeReader:
    """Reads any byte range of one stored file, decrypting only the segments it covers.

    Every segment is authenticated on its own (AES-GCM under the version's key, with the
    file's path, the segment's index and whether it is the last in the associated data), and
    each segment's length and last flag must be where the file's size puts them; so a range
    is either the cataloged bytes or a ``StoreError``, never other bytes. The whole file's
    SHA-256 is checked by whole-file reads (``iter_bytes``), not per range.
    """

    def __init__(
        self, dataset: StoredDataset, entry: StoredFile, obj: Path, base: int, length: int
    ) -> None:
        self.path = entry.path
        self.size = entry.size
        self.object_path = obj
        self._aead = dataset._aead
        self._store_id = dataset.store_id
        self._object = entry.object
        self._seg = dataset.segment_size
        self._record = _SEG_HEADER.size + self._seg + _TAG_LEN
        self._segments = max(1, -(-entry.size // self._seg))
        self._base = base
        self._end = base + length
        expected = object_length(entry.size, self._seg)
        if length != expected:
            raise StoreError(wrong_object_length(entry, dataset.store_id, length, expected))
        self._fd = os.open(obj, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` plaintext bytes from ``offset`` (fewer only at the end of the file)."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        out = bytearray(max(0, min(self.size, offset + size) - offset))
        return bytes(memoryview(out)[: self.read_into(offset, memoryview(out))])

    def read_into(self, offset: int, out: memoryview) -> int:
        """Decrypt the plaintext from ``offset`` into ``out`` (as much as fits, up to the end
        of the file) and return how many bytes were written. Whole segments are decrypted in
        place; on a ``StoreError`` what ``out`` holds must not be used."""
        end = min(self.size, offset + len(out))
        if end <= offset:
            return 0
        first, last = offset // self._seg, (end - 1) // self._seg
        start = self._base + len(MAGIC) + first * self._record
        want = min((last - first + 1) * self._record, self._end - start)
        raw = bytearray(want)
        got = os.preadv(self._fd, [raw], start)
        while got < want:
            more = os.preadv(self._fd, [memoryview(raw)[got:]], start + got)
            if not more:
                raise StoreError(truncated(self.path, self.object_path.name))
            got += more
        view = memoryview(raw)
        at = 0
        for index in range(first, last + 1):
            final = index == self._segments - 1
            plain = self.size - index * self._seg if final else self._seg
            length, flags = _SEG_HEADER.unpack_from(view, at)
            if length != plain + _TAG_LEN or bool(flags & _FLAG_LAST) != final:
                raise StoreError(wrong_segment(self.path, self.object_path.name, index))
            at += _SEG_HEADER.size
            seg_start = index * self._seg
            lo, hi = max(offset, seg_start), min(end, seg_start + plain)
            nonce, aad = _nonce(self._object, index), _aad(self._store_id, self.path, index, final)
            try:
                if lo == seg_start and hi == seg_start + plain:  # the whole segment: in place
                    self._aead.decrypt_into(
                        nonce, view[at : at + length], aad, out[lo - offset : hi - offset]
                    )
                else:
                    segment = self._aead.decrypt(nonce, view[at : at + length], aad)
                    out[lo - offset : hi - offset] = segment[lo - seg_start : hi - seg_start]
            except InvalidTag:
                raise StoreError(
                    failed_authentication(self.path, self.object_path.name, index)
                ) from None
            at += length
        return end - offset


class _Window:
    """``read`` over ``length`` bytes of a pack from ``offset``: one object of it."""

    def __init__(self, raw: Any, offset: int, length: int) -> None:
        self._fd = raw.fileno()
        self._offset = offset
        self.left = length

    def read(self, size: int) -> bytes:
        size = min(size, self.left)
        data = os.pread(self._fd, size, self._offset)
        while len(data) < size:
            more = os.pread(self._fd, size - len(data), self._offset + len(data))
            if not more:
                break
            data += more
        self._offset += len(data)
        self.left -= len(data)
        return data


class _SegmentReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def read_meta(location: Path) -> dict[str, Any]:
    """A stored version's ``store.json`` (plaintext facts: format, store id, segment size)."""
    meta_path = Path(location) / "store.json"
    if not meta_path.is_file():
        raise StoreError(f"no stored dataset version at {location}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") not in READABLE_FORMATS:
        raise StoreError(f"{meta_path} has unknown format {meta.get('format')!r}")
    return dict(meta)


def unwrap_data_key(version: Any, master_key: KeyWrapper) -> bytes:
    """The data key of a cataloged version, unwrapped with the enclave master key."""
    location, wrapped = _location_and_key(version)
    store_id = read_meta(location)["store_id"]
    try:
        return master_key.unwrap(wrapped, key_context(store_id))
    except EnclaveError:
        raise
    except Exception as exc:  # the custody module decides its own error types
        raise StoreError(
            f"the master key does not open stored version {store_id} ({exc})"
        ) from None


def open_version(version: Any, master_key: KeyWrapper) -> StoredDataset:
    """Open a cataloged version (``store_location`` and ``wrapped_key``) for reading."""
    location, _ = _location_and_key(version)
    return StoredDataset(location, unwrap_data_key(version, master_key))


def materialize(version: Any, dest_dir: Path, master_key: KeyWrapper) -> Path:
    """Decrypt a stored version into ``dest_dir`` (created; must be empty) and return it.

    Files are written under a temporary name and renamed when their hash has been checked,
    so a damaged object never leaves a plausible-looking file behind.
    """
    dataset = open_version(version, master_key)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise StoreError(f"{dest} is not empty; materialize into a new folder")
    for path in dataset.files:
        target = dest / path
        if not target.resolve().is_relative_to(dest.resolve()):
            raise StoreError(f"stored path {path!r} escapes the destination folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        try:
            with open(tmp, "wb") as out:
                for chunk in dataset.iter_bytes(path):
                    out.write(chunk)
            os.rename(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return dest
