"""Read, check and combine shares back into the original dataset.

Order of trust: structure (header, footer, manifest) -> signature by the provider's
verify key -> same transfer, distinct indexes -> block-hash index and key share
against the signed manifest -> key commitment after Shamir -> per segment, the GCM
tag before a byte is unpacked (and, only when it fails, every block against its
signed hash, to name the share at fault and replace it with a spare). Unpacking goes to a hidden staging folder next to the output; the
dataset is renamed into place only after the last segment checked out, and the
staging folder is removed on any failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secret_sharing import format as fmt
from secret_sharing.allocator import uninitialized_bytearray
from secret_sharing.erasure import ErasureDecoder
from secret_sharing.errors import (
    NotEnoughSharesError,
    OutputExistsError,
    ShareError,
    ShareFormatError,
    ShareIntegrityError,
    ShareParameterError,
    ShareSignatureError,
)
from secret_sharing.fileio import drop_cached, read_into
from secret_sharing.keys import key_fingerprint
from secret_sharing.shamir import combine_secret
from secret_sharing.split import worker_count
from secret_sharing.unpacking import FileCallback, SegmentCursor, unpack_segments

if TYPE_CHECKING:
    from secret_sharing.verify import BlockDigester

Progress = Callable[[int], None]
MAX_MANIFEST_LENGTH = 4 * 1024 * 1024
STAGING_PREFIX = ".enclave-staging-"


@dataclass(frozen=True)
class ShareInfo:
    """What one share file says about itself; structurally checked, not yet trusted."""

    path: Path
    header: fmt.Header
    footer: fmt.Footer
    manifest: fmt.Manifest
    manifest_bytes: bytes
    signature: bytes
    file_length: int

    @property
    def transfer_id(self) -> str:
        return self.manifest.transfer_id

    @property
    def version(self) -> int:
        """The share format version (header, footer and manifest agree on it)."""
        return self.header.version

    @property
    def index(self) -> int:
        return self.header.share_index

    @property
    def k(self) -> int:
        return self.manifest.k

    @property
    def n(self) -> int:
        return self.manifest.n

    @property
    def share_length(self) -> int:
        return self.manifest.share_length

    @property
    def signer_fingerprint(self) -> str:
        return self.manifest.signer

    @property
    def dataset_name(self) -> str:
        return self.manifest.dataset_name

    @property
    def dataset_kind(self) -> str:
        return self.manifest.dataset_kind

    @property
    def layout(self) -> fmt.Layout:
        return self.manifest.layout(len(self.manifest_bytes))


@dataclass(frozen=True)
class CombineResult:
    transfer_id: str
    output_path: Path
    used_shares: list[Path]
    rejected: dict[Path, str] = field(default_factory=dict)


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise EOFError
        data += more
    return data


def read_share_info(path: Path) -> ShareInfo:
    """Parse header, footer and manifest without any key; raise ShareFormatError naming
    the file on any structural problem."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ShareFormatError(f"{path}: no such share file") from None
    except IsADirectoryError:
        raise ShareFormatError(f"{path}: is a directory, not a share file") from None
    except OSError as exc:
        raise ShareFormatError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        return _read_share_info(path, fd)
    except fmt.FormatProblem as exc:
        raise ShareFormatError(f"{path}: {exc}") from None
    except EOFError:
        raise ShareFormatError(f"{path}: truncated share file") from None
    except OSError as exc:
        raise ShareFormatError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _read_share_info(path: Path, fd: int) -> ShareInfo:
    length = os.fstat(fd).st_size
    if length < fmt.HEADER_LEN + fmt.FOOTER_LEN:
        start = os.pread(fd, len(fmt.HEADER_MAGIC), 0)
        if not fmt.HEADER_MAGIC.startswith(start):
            raise fmt.FormatProblem("not an enclave share (bad header magic)")
        raise fmt.FormatProblem(f"truncated share file ({length} bytes)")
    header = fmt.Header.decode(_pread_exact(fd, fmt.HEADER_LEN, 0))
    footer = fmt.Footer.decode(_pread_exact(fd, fmt.FOOTER_LEN, length - fmt.FOOTER_LEN), length)
    if footer.transfer_id != header.transfer_id or footer.share_index != header.share_index:
        raise fmt.FormatProblem(
            "header and footer disagree on the transfer or share index (corrupt or truncated)"
        )
    if footer.manifest_length > MAX_MANIFEST_LENGTH:
        raise fmt.FormatProblem("corrupt footer (manifest length is implausible)")
    manifest_bytes = _pread_exact(fd, footer.manifest_length, footer.manifest_offset)
    signature = _pread_exact(fd, fmt.SIGNATURE_LEN, footer.signature_offset)
    manifest = fmt.Manifest.decode(manifest_bytes)
    if manifest.transfer_id_bytes != header.transfer_id:
        raise fmt.FormatProblem("header transfer id differs from the manifest's (corrupt)")
    if not header.version == footer.version == manifest.version:
        raise fmt.FormatProblem(
            f"header, footer and manifest name different format versions ({header.version}, "
            f"{footer.version}, {manifest.version}): corrupt"
        )
    if (manifest.k, manifest.n, manifest.segment_size) != (
        header.k,
        header.n,
        header.segment_size,
    ):
        raise fmt.FormatProblem("header k, n or segment size differs from the manifest's (corrupt)")
    layout = manifest.layout(len(manifest_bytes))
    if (
        fmt.Footer.for_layout(layout, header.transfer_id, header.share_index, footer.version)
        != footer
    ):
        raise fmt.FormatProblem(
            "footer offsets differ from the layout the manifest implies (corrupt)"
        )
    if manifest.share_length != length or layout.share_length != length:
        raise fmt.FormatProblem(
            f"share is {length} bytes, the manifest says {manifest.share_length} (truncated or padded)"
        )
    return ShareInfo(path, header, footer, manifest, manifest_bytes, signature, length)


def _check_signature(info: ShareInfo, verify_key: Ed25519PublicKey) -> None:
    if not isinstance(verify_key, Ed25519PublicKey):
        raise ShareParameterError("the verify key must be an Ed25519 public key")
    try:
        verify_key.verify(info.signature, info.manifest_bytes)
        return
    except InvalidSignature:
        pass
    expected = key_fingerprint(verify_key)
    if info.manifest.signer != expected:
        raise ShareSignatureError(
            f"{info.path}: not signed by the given verify key (share names signer "
            f"{info.manifest.signer[:16]}..., the verify key is {expected[:16]}...)"
        )
    raise ShareSignatureError(
        f"{info.path}: manifest signature does not verify (manifest or signature altered)"
    )


def _read_index(info: ShareInfo, fd: int) -> bytes:
    layout = info.layout
    index = _pread_exact(fd, layout.index_length, layout.index_offset)
    digest = fmt.index_hash(info.header.transfer_id, info.index, index, info.version).hex()
    if digest != info.manifest.entry(info.index).index_hash:
        raise ShareIntegrityError(
            f"{info.path}: block-hash index does not match the signed manifest (corrupt)"
        )
    return index


def _read_key_share(info: ShareInfo, fd: int) -> bytes:
    key_share = _pread_exact(fd, fmt.KEY_SHARE_LEN, info.layout.key_share_offset)
    digest = fmt.key_share_hash(info.header.transfer_id, info.index, key_share, info.version).hex()
    if digest != info.manifest.entry(info.index).key_share_hash or key_share[0] != info.index:
        raise ShareIntegrityError(
            f"{info.path}: key share does not match the signed manifest (corrupt)"
        )
    return key_share


def verify_share(
    path: Path, verify_key: Ed25519PublicKey, digester: BlockDigester | None = None
) -> ShareInfo:
    """Check one share completely on its own: signature, layout, index, key share and
    every data block. Raises a ShareError naming the file, or returns its info.

    ``digester`` (a receiver's ``BlockDigester``, fed the blocks as they were stored) stands
    in for reading the data blocks back when it covers exactly this share.
    """
    info = read_share_info(path)
    _check_signature(info, verify_key)
    fd = os.open(info.path, os.O_RDONLY)
    try:
        index = _read_index(info, fd)
        _read_key_share(info, fd)
        layout = info.layout
        tid = info.header.transfer_id
        digests = digester.digests_for(info) if digester is not None else None
        for segment in range(layout.segment_count):
            if digests is not None:
                digest = digests[segment]
            else:
                block = _pread_exact(fd, layout.block_length(segment), layout.block_offset(segment))
                digest = fmt.block_hash(tid, info.index, segment, block, info.version)
            if digest != index[segment * fmt.HASH_LEN : (segment + 1) * fmt.HASH_LEN]:
                raise ShareIntegrityError(
                    f"{info.path}: data block of segment {segment} does not match its signed hash (corrupt)"
                )
    except EOFError:
        raise ShareFormatError(f"{info.path}: truncated share file") from None
    finally:
        os.close(fd)
    return info


# --- combining --------------------------------------------------------------------------


@dataclass(eq=False)
class _OpenShare:
    info: ShareInfo
    fd: int
    index_bytes: bytes = b""
    key_share: bytes = b""

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def number(self) -> int:
        return self.info.index

    def expected_hash(self, segment: int) -> bytes:
        return self.index_bytes[segment * fmt.HASH_LEN : (segment + 1) * fmt.HASH_LEN]


@dataclass
class _SegmentFailure:
    """Blocks of some shares failed their hash (or could not be read) for one segment."""

    segment: int
    problems: dict[_OpenShare, str]


class _SegmentDecoder:
    """Erasure-decodes and decrypts one segment, finding bad blocks by their hash (thread-safe).

    The GCM tag is checked first: under the key the signed manifest commits to, it
    authenticates the whole segment, so a segment that decrypts needs no block hashes (they
    were checked by the receivers, and cost a hash pass over every byte). Only when the
    tag or the padding fails are the blocks read again and hashed, to name the share at
    fault so a spare can replace it; if every block matches its signed hash the transfer is
    corrupt at its source.
    """

    def __init__(self, manifest: fmt.Manifest, layout: fmt.Layout, key: bytes):
        self._manifest = manifest
        self._layout = layout
        self._key = key
        self._tid = manifest.transfer_id_bytes
        self._version = manifest.version
        self._prefix = manifest.nonce_prefix_bytes
        self._local = threading.local()
        self._erasure = ErasureDecoder(manifest.k, manifest.n)

    def _tools(self) -> tuple[AESGCM, memoryview]:
        """This thread's cipher and read buffer (reused every segment): k full blocks for
        the segment's ciphertext, then room for the parity blocks that stand in for missing
        primary ones."""
        tools = getattr(self._local, "tools", None)
        if tools is None:
            k, n = self._manifest.k, self._manifest.n
            tools = (
                AESGCM(self._key),
                memoryview(bytearray(self._layout.full_block_length * (k + min(k, n - k)))),
            )
            self._local.tools = tools
        return tools

    def __call__(
        self, segment: int, shares: tuple[_OpenShare, ...], *, check_hashes: bool = False
    ) -> memoryview | _SegmentFailure:
        """The segment's verified plaintext, or which shares' blocks are bad.

        The k blocks are read side by side into this thread's read buffer, each primary
        block (zfec is systematic) at its place in the segment's ciphertext and each parity
        block after them; the erasure decoder writes the missing primary blocks into their
        places, so the buffer's first k blocks are the ciphertext, which is decrypted straight
        into a fresh plaintext buffer. A segment costs one read, one decryption, the decoding
        of only the blocks that are missing, and no copies. (OpenSSL could decrypt over the
        ciphertext itself, but ``cryptography`` 51 refuses overlapping buffers; reusing the
        read buffer keeps the allocations at one per segment, as in-place decryption had.)
        The plaintext is a view of that fresh buffer; the caller owns it.
        """
        layout, manifest = self._layout, self._manifest
        k, n = manifest.k, manifest.n
        length = layout.block_length(segment)
        offset = layout.block_offset(segment)
        aes, read_buffer = self._tools()
        problems: dict[_OpenShare, str] = {}
        blocks: list[memoryview] = []
        next_parity = k
        for share in shares:
            number = share.number - 1
            if number < k:
                position = number
            else:
                position, next_parity = next_parity, next_parity + 1
            block = read_buffer[position * length : (position + 1) * length]
            blocks.append(block)
            try:
                read_into(share.fd, block, offset)
                # Read once: its page-cache pages serve the next segments' reads instead of
                # fresh memory (a retry with hash checks reads it again, from the disk).
                drop_cached(share.fd, offset, length)
            except EOFError:
                problems[share] = f"truncated in segment {segment}"
                continue
            except OSError as exc:
                problems[share] = f"cannot read segment {segment}: {exc.strerror}"
                continue
            if check_hashes and fmt.block_hash(
                self._tid, share.number, segment, block, self._version
            ) != share.expected_hash(segment):
                problems[share] = (
                    f"data block of segment {segment} does not match its signed hash (corrupt)"
                )
        if problems:
            return _SegmentFailure(segment, problems)
        ciphertext = read_buffer[: length * k]
        numbers = [share.number - 1 for share in shares]
        if any(number >= k for number in numbers):
            primaries = [ciphertext[j * length : (j + 1) * length] for j in range(k)]
            self._erasure.decode_into(blocks, numbers, primaries)
        plaintext_length = layout.segment_length(segment)
        ciphertext_length = plaintext_length + fmt.TAG_LEN
        last = segment == layout.segment_count - 1
        # Not zero-filled: decrypt_into writes every byte, and a failure drops the buffer.
        plaintext = memoryview(uninitialized_bytearray(plaintext_length))
        try:
            if any(ciphertext[ciphertext_length:]):  # fewer than k bytes of padding
                raise InvalidTag
            aes.decrypt_into(
                fmt.nonce(self._prefix, segment),
                ciphertext[:ciphertext_length],
                fmt.associated_data(self._tid, segment, last, k, n, self._version),
                plaintext,
            )
        except InvalidTag:
            if not check_hashes:
                return self(segment, shares, check_hashes=True)  # which share is at fault?
            raise ShareIntegrityError(
                f"segment {segment} of transfer {manifest.transfer_id} fails authenticated "
                "decryption (or has non-zero padding) although its blocks match the signed "
                "hashes: the transfer is corrupt at its source"
            ) from None
        return plaintext


def _open_candidates(
    share_paths: Sequence[Path], verify_key: Ed25519PublicKey, rejected: dict[Path, str]
) -> list[_OpenShare]:
    """Structure and signature checks, then one transfer, distinct indexes, and the
    index and key share of each share against the signed manifest."""
    signed: list[ShareInfo] = []
    for raw_path in share_paths:
        path = Path(raw_path)
        try:
            info = read_share_info(path)
            _check_signature(info, verify_key)
        except ShareParameterError:
            raise
        except ShareError as exc:
            rejected[path] = _strip_path(str(exc), path)
            continue
        signed.append(info)
    if not signed:
        return []
    # The transfer most given shares belong to; ties go to the first valid share.
    counts = Counter(info.transfer_id for info in signed)
    best = max(counts.values())
    transfer = next(info.transfer_id for info in signed if counts[info.transfer_id] == best)
    chosen: list[_OpenShare] = []
    seen: dict[int, Path] = {}
    reference: bytes | None = None
    for info in signed:
        if info.transfer_id != transfer:
            rejected[info.path] = (
                f"belongs to transfer {info.transfer_id}, not {transfer} "
                "(the transfer of the other shares)"
            )
            continue
        reference = reference or info.manifest_bytes
        if info.manifest_bytes != reference:
            rejected[info.path] = (
                f"its signed manifest differs from the other shares of transfer {transfer}"
            )
            continue
        if info.index in seen:
            rejected[info.path] = (
                f"duplicates share index {info.index} (already given as {seen[info.index]})"
            )
            continue
        seen[info.index] = info.path
        try:
            fd = os.open(info.path, os.O_RDONLY)
        except OSError as exc:
            rejected[info.path] = f"cannot open: {exc.strerror}"
            continue
        share = _OpenShare(info, fd)
        try:
            share.index_bytes = _read_index(info, fd)
            share.key_share = _read_key_share(info, fd)
        except (ShareError, EOFError, OSError) as exc:
            os.close(fd)
            reason = "truncated share file" if isinstance(exc, EOFError) else str(exc)
            rejected[info.path] = _strip_path(reason, info.path)
            continue
        chosen.append(share)
    return chosen


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def combine_shares(
    share_paths: Sequence[Path],
    out_dir: Path,
    *,
    verify_key: Ed25519PublicKey,
    progress: Progress | None = None,
    on_file: FileCallback | None = None,
    before_publish: Callable[[], None] | None = None,
) -> CombineResult:
    """Rebuild the dataset from any k or more shares as ``out_dir/<dataset name>``.

    Bad shares (corrupt, foreign, duplicated, wrongly signed) are named in
    ``rejected`` and replaced by spares; if fewer than k good ones remain the call
    raises NotEnoughSharesError listing each share's problem. Any failure leaves
    nothing in ``out_dir`` (and removes ``out_dir`` itself if this call created it).

    ``on_file(path, relative_path, data)`` is told of each file as soon as it is unpacked
    (every byte of it already passed its GCM check) in the hidden staging folder, with its
    bytes as views of the decrypted segments (None for files over
    ``unpacking.IN_MEMORY_LIMIT``), so the caller can validate and store while the rest is
    decrypted. Those paths are valid until the dataset is renamed into place:
    ``before_publish()`` runs just before, once the whole archive
    checked out, and must return only when the caller has finished reading them. If it
    raises, nothing is published.
    """
    if not isinstance(verify_key, Ed25519PublicKey):
        raise ShareParameterError("the verify key must be an Ed25519 public key")
    if not share_paths:
        raise NotEnoughSharesError("no share files given")
    rejected: dict[Path, str] = {}
    shares = _open_candidates(share_paths, verify_key, rejected)
    # Lowest indexes first: shares 1..k hold the ciphertext itself (zfec is systematic),
    # so every primary block among the chosen ones is one block less to decode.
    shares.sort(key=lambda share: share.number)
    try:
        if not shares:
            raise NotEnoughSharesError("no usable share among the files given", rejected)
        manifest = shares[0].info.manifest
        if len(shares) < manifest.k:
            raise NotEnoughSharesError(
                f"transfer {manifest.transfer_id} needs {manifest.k} good shares of "
                f"{manifest.n}, have {len(shares)}",
                rejected,
            )
        key = combine_secret([(s.number, s.key_share[1:]) for s in shares[: manifest.k]])
        if fmt.key_commitment(key, manifest.transfer_id_bytes).hex() != manifest.key_commitment:
            raise ShareIntegrityError(
                f"transfer {manifest.transfer_id}: the recombined key does not match the signed "
                "key commitment"
            )
        return _reconstruct(
            shares, manifest, key, Path(out_dir), rejected, progress, on_file, before_publish
        )
    finally:
        for share in shares:
            os.close(share.fd)


def _reconstruct(
    shares: list[_OpenShare],
    manifest: fmt.Manifest,
    key: bytes,
    out_dir: Path,
    rejected: dict[Path, str],
    progress: Progress | None,
    on_file: FileCallback | None = None,
    before_publish: Callable[[], None] | None = None,
) -> CombineResult:
    target = out_dir / manifest.dataset_name
    if os.path.lexists(target):
        raise OutputExistsError(f"{target} already exists; refusing to overwrite it")
    created_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{manifest.transfer_id}-", dir=out_dir))
    active = list(shares[: manifest.k])
    spares = list(shares[manifest.k :])
    used: list[_OpenShare] = list(active)
    layout = shares[0].info.layout
    decode = _SegmentDecoder(manifest, layout, key)
    where = f"transfer {manifest.transfer_id}"

    def replace_failed(failure: _SegmentFailure) -> None:
        for share, reason in failure.problems.items():
            rejected.setdefault(share.path, reason)
            if share in active:
                active.remove(share)
        while len(active) < manifest.k and spares:
            spare = spares.pop(0)
            active.append(spare)
            used.append(spare)
        if len(active) < manifest.k:
            raise NotEnoughSharesError(
                f"{where}: fewer than k={manifest.k} good shares remain at segment {failure.segment}",
                rejected,
            )

    def segments() -> Generator[bytearray, None, None]:
        workers = worker_count()
        in_flight: deque[tuple[int, Future]] = deque()
        next_segment = 0
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="share-combine") as pool:
            try:
                for segment in range(layout.segment_count):
                    while next_segment < layout.segment_count and len(in_flight) < 2 * workers:
                        in_flight.append(
                            (next_segment, pool.submit(decode, next_segment, tuple(active)))
                        )
                        next_segment += 1
                    _, future = in_flight.popleft()
                    result = future.result()
                    while isinstance(result, _SegmentFailure):
                        replace_failed(result)
                        result = decode(segment, tuple(active))
                    if progress is not None:
                        progress(len(result))
                    yield result
            finally:
                for _, future in in_flight:
                    future.cancel()

    stream = segments()
    try:
        reader = SegmentCursor(stream)
        unpack_segments(
            reader, staging, manifest.dataset_name, manifest.dataset_kind, where, on_file
        )
        if not reader.rest_is_zero():
            raise ShareIntegrityError(f"{where}: data follows the end of the archive")
        if reader.consumed != manifest.plaintext_length:
            raise ShareIntegrityError(
                f"{where}: reconstructed {reader.consumed} bytes, the manifest says "
                f"{manifest.plaintext_length}"
            )
        produced = staging / manifest.dataset_name
        if not os.path.lexists(produced):
            raise ShareIntegrityError(
                f"{where}: the archive did not contain {manifest.dataset_name}"
            )
        if before_publish is not None:
            before_publish()
        if os.path.lexists(target):
            raise OutputExistsError(f"{target} appeared while combining; refusing to overwrite it")
        os.rename(produced, target)
    except BaseException:
        stream.close()
        shutil.rmtree(staging, ignore_errors=True)
        if created_out_dir:
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return CombineResult(
        manifest.transfer_id,
        target,
        [share.path for share in used if share.path not in rejected],
        {path: reason for path, reason in rejected.items()},
    )
