"""What the airlock needs to recognise a dataset's bytes and identifiers, computed at ingestion.

* Chunk digests: every 64 KiB-aligned chunk of every file (offsets 0, 64 Ki, 128 Ki, ...) is
  hashed with BLAKE3, 16 bytes kept. An export whose aligned chunks match is carrying a dataset
  file's bytes, whatever it is named or wherever it was cut (a copy padded at the front to a
  multiple of 64 KiB, or a tail, still lines up; that is the point of aligning on the output's
  own offsets as well). Chunks that say nothing (zeros, padding: fewer than ``MIN_VARIETY``
  distinct byte values in a sample) are left out, or every result with a run of zeros would
  match a DICOM file's background.
* Identifier digests: the subject and patient identifiers of a version, kept only as salted
  SHA-256 prefixes (case-insensitive), never as the values themselves.

The digests are computed on the bytes as they are encrypted into the store (``ChunkHasher``), so
ingestion reads no byte twice for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: Chunks of this size, aligned at multiples of it from the start of a file, are indexed.
CHUNK_BYTES = 64 * 1024
#: Bytes of a chunk's BLAKE3 digest kept in the index.
CHUNK_DIGEST_BYTES = 16
#: A chunk with fewer distinct values than this among its sampled bytes says nothing.
MIN_VARIETY = 8
#: Every ``_SAMPLE_STRIDE``-th byte of a chunk is looked at for its variety.
_SAMPLE_STRIDE = 256
#: Bytes of an identifier's digest kept in the index.
IDENTIFIER_DIGEST_BYTES = 16
_IDENTIFIER_SALT = b"enclave-identifier\0"


def informative(chunk: Any) -> bool:
    """Whether a full chunk carries enough variety to identify the file it came from."""
    return len(set(bytes(chunk[::_SAMPLE_STRIDE]))) >= MIN_VARIETY


def chunk_digest(chunk: Any) -> bytes:
    import blake3

    return blake3.blake3(chunk).digest(length=CHUNK_DIGEST_BYTES)


class ChunkHasher:
    """Fed a file's bytes in order (pieces of any size), keeps the digest of each informative
    aligned chunk. A short tail is not indexed: it is not a full chunk."""

    def __init__(self) -> None:
        self.digests: list[bytes] = []
        self._pending = bytearray()

    def update(self, piece: Any) -> None:
        view = memoryview(piece).cast("B")
        if self._pending:
            take = min(len(view), CHUNK_BYTES - len(self._pending))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < CHUNK_BYTES:
                return
            self._add(self._pending)
            self._pending = bytearray()
        whole = len(view) - len(view) % CHUNK_BYTES
        for start in range(0, whole, CHUNK_BYTES):
            self._add(view[start : start + CHUNK_BYTES])
        if whole < len(view):
            self._pending += view[whole:]

    def _add(self, chunk: Any) -> None:
        if informative(chunk):
            self.digests.append(chunk_digest(chunk))


def iter_chunk_digests(path: Path) -> Iterator[tuple[int, bytes]]:
    """(offset, digest) of each informative aligned chunk of a file on disk."""
    with open(path, "rb") as fh:
        offset = 0
        while chunk := fh.read(CHUNK_BYTES):
            if len(chunk) == CHUNK_BYTES and informative(chunk):
                yield offset, chunk_digest(chunk)
            offset += len(chunk)


def identifier_digest(value: str | bytes) -> bytes:
    """The digest an identifier is indexed under (case-insensitive), never the value itself."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    salted = _IDENTIFIER_SALT + raw.strip().lower()
    return hashlib.sha256(salted).digest()[:IDENTIFIER_DIGEST_BYTES]


def identifier_digests(values: Iterable[str]) -> list[bytes]:
    """Distinct digests of the non-empty identifiers among ``values``, in a stable order."""
    return sorted({identifier_digest(v) for v in values if str(v).strip()})
