"""Split a dataset into n signed shares, any k of which rebuild it.

Per segment: AES-256-GCM under a fresh per-transfer key, pad the ciphertext to k
equal blocks, erasure-code them to n blocks (zfec's code, computed by ISA-L where it is
installed: ``erasure.py``), hash each block. AESGCM, the coder and hashlib all release
the GIL, so a small thread pool keeps both cores busy while the main thread reads the
dataset and appends blocks to the share files in order.
At most ``2 x workers`` segments are in flight, which bounds memory whatever the
dataset's size.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secret_sharing import format as fmt
from secret_sharing.erasure import ParityEncoder
from secret_sharing.errors import DatasetError, OutputExistsError, ShareParameterError
from secret_sharing.fileio import write_at
from secret_sharing.keys import key_fingerprint
from secret_sharing.packing import measure_dataset, pack_segments
from secret_sharing.shamir import split_secret

Progress = Callable[[int], None]


@dataclass(frozen=True)
class SplitResult:
    transfer_id: str
    share_paths: list[Path]
    manifest: fmt.Manifest
    bytes_in: int


def share_file_name(index: int) -> str:
    return f"share-{index}"


# Memory for segments in flight. A segment of S bytes occupies about S * (1 + n/k)
# while it is being encoded (plaintext, padded ciphertext, n - k parity blocks).
IN_FLIGHT_BUDGET = 96 * 1024 * 1024


def worker_count() -> int:
    """Threads doing crypto and coding; the main thread does the file I/O."""
    return max(1, min(os.cpu_count() or 1, 8))


def segments_in_flight(k: int, n: int, segment_size: int, workers: int) -> int:
    """Enough segments to keep every worker busy, few enough to bound memory: at most
    2 per worker, and within IN_FLIGHT_BUDGET unless a single segment exceeds it."""
    per_segment = segment_size * (1 + n / k)
    return max(1, min(2 * workers, int(IN_FLIGHT_BUDGET // per_segment)))


class _SegmentEncoder:
    """Encrypts, pads, erasure-codes and hashes one segment; safe to call from threads."""

    def __init__(
        self,
        key: bytes,
        nonce_prefix: bytes,
        transfer_id: bytes,
        k: int,
        n: int,
        segment_size: int,
        version: int = fmt.FORMAT_VERSION,
    ):
        self._key = key
        self._prefix = nonce_prefix
        self._tid = transfer_id
        self._k = self.k = k
        self._n = self.n = n
        self.segment_size = segment_size
        self.version = version
        self.fds: list[int] = []
        self._local = threading.local()

    def _tools(self) -> tuple[AESGCM, ParityEncoder]:
        tools = getattr(self._local, "tools", None)
        if tools is None:
            tools = self._local.tools = (AESGCM(self._key), ParityEncoder(self._k, self._n))
        return tools

    def _segment_buffer(self) -> bytearray:
        """This thread's buffer for the n blocks of a full segment, reused rather than a
        fresh 7 MB buffer (and its page faults) per segment."""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            full = fmt.block_length(self.segment_size, self._k)
            buffer = self._local.buffer = bytearray(full * self._n)
        return buffer

    def __call__(self, index: int, plaintext: bytearray, last: bool) -> list[bytes]:
        """Encode segment ``index``, write block j at its place in share j; return the
        n block hashes. Writes go to known offsets, so workers need no ordering."""
        aes, encoder = self._tools()
        k, n = self._k, self._n
        ciphertext_length = len(plaintext) + fmt.TAG_LEN
        block = fmt.block_length(len(plaintext), k)
        view = memoryview(self._segment_buffer())[: block * n]
        aes.encrypt_into(
            fmt.nonce(self._prefix, index),
            plaintext,
            fmt.associated_data(self._tid, index, last, k, n, self.version),
            view[:ciphertext_length],
        )
        view[ciphertext_length : block * k] = bytes(block * k - ciphertext_length)  # padding
        blocks = [view[j * block : (j + 1) * block] for j in range(n)]
        encoder.encode_into(blocks[:k], blocks[k:])
        offset = fmt.HEADER_LEN + index * fmt.block_length(self.segment_size, k)
        hashes = []
        for j in range(n):
            hashes.append(fmt.block_hash(self._tid, j + 1, index, blocks[j], self.version))
            write_at(self.fds[j], blocks[j], offset)
        return hashes


def _check_signing_key(signing_key: object) -> Ed25519PrivateKey:
    if not isinstance(signing_key, Ed25519PrivateKey):
        raise ShareParameterError("the signing key must be an Ed25519 private key")
    return signing_key


def split_dataset(
    source: Path,
    out_dir: Path,
    *,
    k: int,
    n: int,
    signing_key: Ed25519PrivateKey,
    segment_size: int = fmt.DEFAULT_SEGMENT_SIZE,
    progress: Progress | None = None,
    format_version: int = fmt.FORMAT_VERSION,
) -> SplitResult:
    """Write ``out_dir/share-1`` .. ``share-n`` for the file or folder ``source``.

    Share files appear only when complete (written under temporary names, then
    renamed); on any failure the partial files are removed. ``format_version`` 1 writes
    shares for readers that predate BLAKE3 (docs/share-format.md).
    """
    if format_version not in fmt.SUPPORTED_VERSIONS:
        raise ShareParameterError(
            f"share format version {format_version} is not one of "
            f"{', '.join(map(str, fmt.SUPPORTED_VERSIONS))}"
        )
    try:
        fmt.check_parameters(k, n, segment_size)
    except fmt.FormatProblem as exc:
        raise ShareParameterError(str(exc)) from None
    signing_key = _check_signing_key(signing_key)
    source = Path(source)
    summary = measure_dataset(source)  # refuses symlinks etc. before any share exists

    out_dir = Path(out_dir)
    if summary.kind == "dir" and Path(os.path.realpath(out_dir)).is_relative_to(
        os.path.realpath(source)
    ):
        raise DatasetError(f"the output folder {out_dir} is inside the dataset {source}")
    out_dir.mkdir(parents=True, exist_ok=True)
    final_paths = [out_dir / share_file_name(j) for j in range(1, n + 1)]
    for path in final_paths:
        if path.exists():
            raise OutputExistsError(f"{path} already exists; refusing to overwrite a share")

    transfer_id = os.urandom(fmt.TRANSFER_ID_LEN)
    key = os.urandom(fmt.KEY_LEN)
    nonce_prefix = os.urandom(fmt.NONCE_PREFIX_LEN)
    key_shares = [bytes((x,)) + y for x, y in split_secret(key, k, n)]
    encode = _SegmentEncoder(key, nonce_prefix, transfer_id, k, n, segment_size, format_version)

    partial_paths = [out_dir / f".{path.name}.{transfer_id.hex()}.partial" for path in final_paths]
    fds = encode.fds
    renamed: list[Path] = []
    try:
        for j, path in enumerate(partial_paths, start=1):
            fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            header = fmt.Header(transfer_id, j, k, n, segment_size, format_version)
            write_at(fds[-1], header.encode(), 0)

        index_hashes: list[list[bytes]] = [[] for _ in range(n)]
        plaintext_length = _pump(
            pack_segments(source, segment_size), encode, index_hashes, progress
        )

        indexes = [b"".join(hashes) for hashes in index_hashes]
        entries = tuple(
            fmt.ShareEntry(
                j,
                fmt.index_hash(transfer_id, j, indexes[j - 1], format_version).hex(),
                fmt.key_share_hash(transfer_id, j, key_shares[j - 1], format_version).hex(),
            )
            for j in range(1, n + 1)
        )
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def build(share_length: int) -> fmt.Manifest:
            return fmt.Manifest(
                transfer_id=transfer_id.hex(),
                created=created,
                k=k,
                n=n,
                segment_size=segment_size,
                segment_count=fmt.segment_count(plaintext_length, segment_size),
                plaintext_length=plaintext_length,
                share_length=share_length,
                nonce_prefix=nonce_prefix.hex(),
                dataset_name=summary.name,
                dataset_kind=summary.kind,
                signer=key_fingerprint(signing_key.public_key()),
                key_commitment=fmt.key_commitment(key, transfer_id).hex(),
                shares=entries,
                version=format_version,
            )

        manifest, manifest_bytes = fmt.solve_share_length(build)
        signature = signing_key.sign(manifest_bytes)
        layout = manifest.layout(len(manifest_bytes))
        for j, fd in enumerate(fds, start=1):
            trailer = indexes[j - 1] + key_shares[j - 1] + manifest_bytes + signature
            footer = fmt.Footer.for_layout(layout, transfer_id, j, format_version).encode()
            write_at(fd, trailer + footer, layout.index_offset)
            if os.fstat(fd).st_size != layout.share_length:
                raise RuntimeError(f"share {j} is not {layout.share_length} bytes long")
        while fds:
            os.close(fds.pop())
        for partial, final in zip(partial_paths, final_paths, strict=True):
            if final.exists():
                raise OutputExistsError(
                    f"{final} appeared while splitting; refusing to overwrite it"
                )
            os.rename(partial, final)
            renamed.append(final)
    except BaseException:
        while fds:
            os.close(fds.pop())
        for path in partial_paths + renamed:
            path.unlink(missing_ok=True)
        raise
    return SplitResult(transfer_id.hex(), final_paths, manifest, plaintext_length)


def _pump(
    segments: Iterable[bytearray],
    encode: _SegmentEncoder,
    index_hashes: list[list[bytes]],
    progress: Progress | None,
) -> int:
    """Run the bounded pipeline; returns the plaintext length. Workers write their
    blocks in place; the main thread reads the dataset and collects block hashes in
    segment order. One segment is held back to learn whether it is the last."""
    workers = worker_count()
    max_in_flight = segments_in_flight(encode.k, encode.n, encode.segment_size, workers)
    in_flight: deque[tuple[int, Future]] = deque()
    total = 0

    def collect(until: int) -> None:
        while len(in_flight) > until:
            length, future = in_flight.popleft()
            for digest, bucket in zip(future.result(), index_hashes, strict=True):
                bucket.append(digest)
            if progress is not None:
                progress(length)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="share-split") as pool:
        try:
            iterator = iter(segments)
            pending = next(iterator, None)
            index = 0
            while pending is not None:
                following = next(iterator, None)
                last = following is None
                in_flight.append((len(pending), pool.submit(encode, index, pending, last)))
                total += len(pending)
                index += 1
                pending = following
                collect(max_in_flight - 1)
            collect(0)
        except BaseException:
            for _, future in in_flight:
                future.cancel()
            raise
    return total
