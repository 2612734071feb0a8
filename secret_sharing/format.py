"""Byte layout of a share file, version 1 (pure encoding and decoding, no I/O).

docs/share-format.md is the normative description; this module is its code.
A share file is::

    header (64 bytes) | data blocks, segment 0..count-1 | block-hash index |
    key share (33 bytes) | manifest JSON | Ed25519 signature (64 bytes) | footer (96 bytes)

All integers are big-endian. The manifest is identical in all n shares of a
transfer and is the only thing signed; every other byte of a share is either
checked against it (header, footer, layout) or hashed into it (index, key share,
and through the index every data block).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from dataclasses import dataclass
from typing import Any

FORMAT_NAME = "enclave-share"
#: Version 2 hashes with BLAKE3 where version 1 used SHA-256 (faster, and the block hashes
#: are the largest cost of a split after ISA-L); readers take both.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)

HEADER_MAGIC = b"ENCSHARE"
FOOTER_MAGIC = b"ENCSHEND"
HEADER_LEN = 64
FOOTER_LEN = 96
KEY_LEN = 32
KEY_SHARE_LEN = 1 + KEY_LEN
TAG_LEN = 16
HASH_LEN = 32
SIGNATURE_LEN = 64
TRANSFER_ID_LEN = 16
NONCE_PREFIX_LEN = 4

MIB = 1024 * 1024
MIN_SEGMENT_SIZE = 1 * MIB
MAX_SEGMENT_SIZE = 4 * MIB
DEFAULT_SEGMENT_SIZE = 4 * MIB
MAX_SHARES = 255

# Fixed per version; a reader refuses a manifest that names anything else. "hash" is the
# hash of blocks, block indexes and key shares.
_ALGORITHMS_V1: dict[str, str] = {
    "cipher": "AES-256-GCM",
    "commitment": "HMAC-SHA256",
    "erasure": "zfec",
    "hash": "SHA-256",
    "key_split": "shamir-gf256-0x11b",
    "packing": "pax-tar",
    "signature": "Ed25519",
}
ALGORITHMS_BY_VERSION: dict[int, dict[str, str]] = {
    1: _ALGORITHMS_V1,
    2: {**_ALGORITHMS_V1, "hash": "BLAKE3"},
}
ALGORITHMS: dict[str, str] = ALGORITHMS_BY_VERSION[FORMAT_VERSION]

DATASET_KINDS = ("dir", "file")

# magic, version, header length, transfer id, share index, k, n, reserved u8,
# segment size, 28 reserved zero bytes
_HEADER = struct.Struct(">8sHH16sBBBBI28s")
# index off/len, key share off/len, manifest off/len, signature off/len,
# transfer id, version, share index, 5 reserved zero bytes, magic
_FOOTER = struct.Struct(">QQQQQQQQ16sHB5s8s")
assert _HEADER.size == HEADER_LEN and _FOOTER.size == FOOTER_LEN

_AAD_LABEL = b"ENCSHARE"
_COMMIT_LABEL = b"commit"


def _domain(version: int, what: str) -> bytes:
    return f"enclave-share/v{version}/{what}".encode() + b"\x00"


def _hasher(version: int, data: bytes) -> Any:
    """A hash object for ``version``'s "hash" algorithm, fed ``data``."""
    if version == 1:
        return hashlib.sha256(data)
    import blake3  # only needed once a version 2 share is at hand

    return blake3.blake3(data)


_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")


class FormatProblem(ValueError):
    """A structural problem; callers wrap it in ShareFormatError with the file name."""


# --- parameters and layout -------------------------------------------------------------


def check_parameters(k: int, n: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
    """Raise FormatProblem unless k, n and the segment size are allowed by the format."""
    for name, value in (("k", k), ("n", n), ("segment size", segment_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise FormatProblem(f"{name} must be an integer, got {value!r}")
    if not 2 <= k <= n <= MAX_SHARES:
        raise FormatProblem(f"need 2 <= k <= n <= {MAX_SHARES}, got k={k}, n={n}")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise FormatProblem(
            f"segment size must be {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE} bytes, got {segment_size}"
        )


def segment_count(plaintext_length: int, segment_size: int) -> int:
    return -(-plaintext_length // segment_size)


def segment_plaintext_length(index: int, plaintext_length: int, segment_size: int) -> int:
    count = segment_count(plaintext_length, segment_size)
    if index < count - 1:
        return segment_size
    return plaintext_length - segment_size * (count - 1)


def block_length(segment_plaintext: int, k: int) -> int:
    """Length of each of the n blocks of a segment: ciphertext+tag padded to k blocks."""
    return -(-(segment_plaintext + TAG_LEN) // k)


@dataclass(frozen=True)
class Layout:
    """Where everything lives in a share file; identical for all n shares of a transfer."""

    k: int
    segment_size: int
    plaintext_length: int
    manifest_length: int

    @property
    def segment_count(self) -> int:
        return segment_count(self.plaintext_length, self.segment_size)

    @property
    def full_block_length(self) -> int:
        return block_length(self.segment_size, self.k)

    def segment_length(self, index: int) -> int:
        return segment_plaintext_length(index, self.plaintext_length, self.segment_size)

    def block_length(self, index: int) -> int:
        return block_length(self.segment_length(index), self.k)

    def block_offset(self, index: int) -> int:
        return HEADER_LEN + index * self.full_block_length

    @property
    def data_length(self) -> int:
        last = self.segment_count - 1
        return last * self.full_block_length + self.block_length(last)

    @property
    def index_offset(self) -> int:
        return HEADER_LEN + self.data_length

    @property
    def index_length(self) -> int:
        return HASH_LEN * self.segment_count

    @property
    def key_share_offset(self) -> int:
        return self.index_offset + self.index_length

    @property
    def manifest_offset(self) -> int:
        return self.key_share_offset + KEY_SHARE_LEN

    @property
    def signature_offset(self) -> int:
        return self.manifest_offset + self.manifest_length

    @property
    def footer_offset(self) -> int:
        return self.signature_offset + SIGNATURE_LEN

    @property
    def share_length(self) -> int:
        return self.footer_offset + FOOTER_LEN


# --- crypto inputs ----------------------------------------------------------------------


def nonce(prefix: bytes, segment_index: int) -> bytes:
    """GCM nonce: 4-byte random per-transfer prefix || 8-byte big-endian segment counter."""
    return prefix + segment_index.to_bytes(8, "big")


def associated_data(
    transfer_id: bytes,
    segment_index: int,
    last: bool,
    k: int,
    n: int,
    version: int = FORMAT_VERSION,
) -> bytes:
    """GCM associated data; binds a segment to its transfer, position and parameters."""
    return (
        _AAD_LABEL
        + version.to_bytes(2, "big")
        + transfer_id
        + segment_index.to_bytes(8, "big")
        + (b"\x01" if last else b"\x00")
        + bytes((k, n))
    )


def block_hasher(
    transfer_id: bytes, share_index: int, segment_index: int, version: int = FORMAT_VERSION
) -> Any:
    """A hash object primed with the block domain; update it with the block bytes."""
    return _hasher(
        version,
        _domain(version, "block")
        + transfer_id
        + bytes((share_index,))
        + segment_index.to_bytes(8, "big"),
    )


def block_hash(
    transfer_id: bytes,
    share_index: int,
    segment_index: int,
    block: Any,
    version: int = FORMAT_VERSION,
) -> bytes:
    hasher = block_hasher(transfer_id, share_index, segment_index, version)
    hasher.update(block)
    return hasher.digest()


def index_hash(
    transfer_id: bytes, share_index: int, index: bytes, version: int = FORMAT_VERSION
) -> bytes:
    return _hasher(
        version, _domain(version, "index") + transfer_id + bytes((share_index,)) + index
    ).digest()


def key_share_hash(
    transfer_id: bytes, share_index: int, key_share: bytes, version: int = FORMAT_VERSION
) -> bytes:
    return _hasher(
        version, _domain(version, "key-share") + transfer_id + bytes((share_index,)) + key_share
    ).digest()


def key_commitment(key: bytes, transfer_id: bytes) -> bytes:
    return hmac.new(key, _COMMIT_LABEL + transfer_id, hashlib.sha256).digest()


# --- header and footer ------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    transfer_id: bytes
    share_index: int
    k: int
    n: int
    segment_size: int
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        return _HEADER.pack(
            HEADER_MAGIC,
            self.version,
            HEADER_LEN,
            self.transfer_id,
            self.share_index,
            self.k,
            self.n,
            0,
            self.segment_size,
            bytes(28),
        )

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        if len(raw) < HEADER_LEN:
            raise FormatProblem("file is shorter than a share header (truncated?)")
        fields = _HEADER.unpack(raw[:HEADER_LEN])
        magic, version, length, tid, index, k, n, reserved, segment_size, padding = fields
        if magic != HEADER_MAGIC:
            raise FormatProblem("not an enclave share (bad header magic)")
        if version not in SUPPORTED_VERSIONS:
            raise FormatProblem(
                f"share format version {version} is not supported (this reader knows "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))})"
            )
        if length != HEADER_LEN or reserved or any(padding):
            raise FormatProblem("corrupt header (reserved fields are not zero)")
        try:
            check_parameters(k, n, segment_size)
        except FormatProblem as exc:
            raise FormatProblem(f"corrupt header: {exc}") from None
        if not 1 <= index <= n:
            raise FormatProblem(f"corrupt header: share index {index} is not in 1..{n}")
        return cls(tid, index, k, n, segment_size, version)


@dataclass(frozen=True)
class Footer:
    index_offset: int
    index_length: int
    key_share_offset: int
    key_share_length: int
    manifest_offset: int
    manifest_length: int
    signature_offset: int
    signature_length: int
    transfer_id: bytes
    share_index: int
    version: int = FORMAT_VERSION

    @classmethod
    def for_layout(
        cls, layout: Layout, transfer_id: bytes, share_index: int, version: int = FORMAT_VERSION
    ) -> Footer:
        return cls(
            layout.index_offset,
            layout.index_length,
            layout.key_share_offset,
            KEY_SHARE_LEN,
            layout.manifest_offset,
            layout.manifest_length,
            layout.signature_offset,
            SIGNATURE_LEN,
            transfer_id,
            share_index,
            version,
        )

    def encode(self) -> bytes:
        return _FOOTER.pack(
            self.index_offset,
            self.index_length,
            self.key_share_offset,
            self.key_share_length,
            self.manifest_offset,
            self.manifest_length,
            self.signature_offset,
            self.signature_length,
            self.transfer_id,
            self.version,
            self.share_index,
            bytes(5),
            FOOTER_MAGIC,
        )

    @classmethod
    def decode(cls, raw: bytes, file_length: int) -> Footer:
        if len(raw) != FOOTER_LEN:
            raise FormatProblem("file is shorter than a share footer (truncated?)")
        (
            index_offset,
            index_length,
            key_share_offset,
            key_share_length,
            manifest_offset,
            manifest_length,
            signature_offset,
            signature_length,
            tid,
            version,
            index,
            reserved,
            magic,
        ) = _FOOTER.unpack(raw)
        if magic != FOOTER_MAGIC:
            raise FormatProblem("no share footer at the end of the file (truncated or corrupt)")
        if version not in SUPPORTED_VERSIONS:
            raise FormatProblem(
                f"share format version {version} is not supported (this reader knows "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))})"
            )
        if any(reserved):
            raise FormatProblem("corrupt footer (reserved bytes are not zero)")
        footer = cls(
            index_offset,
            index_length,
            key_share_offset,
            key_share_length,
            manifest_offset,
            manifest_length,
            signature_offset,
            signature_length,
            tid,
            index,
            version,
        )
        # Sections must tile the space between the data and the footer exactly.
        if footer.key_share_length != KEY_SHARE_LEN or footer.signature_length != SIGNATURE_LEN:
            raise FormatProblem("corrupt footer (section lengths)")
        expected_chain = (
            footer.index_offset + footer.index_length == footer.key_share_offset
            and footer.key_share_offset + KEY_SHARE_LEN == footer.manifest_offset
            and footer.manifest_offset + footer.manifest_length == footer.signature_offset
            and footer.signature_offset + SIGNATURE_LEN + FOOTER_LEN == file_length
            and footer.index_offset > HEADER_LEN
        )
        if not expected_chain:
            raise FormatProblem("corrupt footer (section offsets do not match the file length)")
        return footer


# --- manifest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareEntry:
    """What the signed manifest says about share ``index``."""

    index: int
    index_hash: str  # hex digests with the version's "hash" algorithm
    key_share_hash: str


def _entry_keys(version: int) -> tuple[str, str]:
    """The manifest's names for a share entry's two digests: version 1 named them after
    SHA-256; version 2 names them after what they hash."""
    return (
        ("index_sha256", "key_share_sha256") if version == 1 else ("index_hash", "key_share_hash")
    )


@dataclass(frozen=True)
class Manifest:
    """The signed description of one transfer; identical in all n shares."""

    transfer_id: str
    created: str
    k: int
    n: int
    segment_size: int
    segment_count: int
    plaintext_length: int
    share_length: int
    nonce_prefix: str
    dataset_name: str
    dataset_kind: str
    signer: str
    key_commitment: str
    shares: tuple[ShareEntry, ...]
    version: int = FORMAT_VERSION

    @property
    def algorithms(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(ALGORITHMS_BY_VERSION[self.version].items()))

    @property
    def transfer_id_bytes(self) -> bytes:
        return bytes.fromhex(self.transfer_id)

    @property
    def nonce_prefix_bytes(self) -> bytes:
        return bytes.fromhex(self.nonce_prefix)

    def layout(self, manifest_length: int) -> Layout:
        return Layout(self.k, self.segment_size, self.plaintext_length, manifest_length)

    def entry(self, share_index: int) -> ShareEntry:
        return self.shares[share_index - 1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithms": dict(self.algorithms),
            "created": self.created,
            "dataset": {"kind": self.dataset_kind, "name": self.dataset_name},
            "format": FORMAT_NAME,
            "k": self.k,
            "key_commitment": self.key_commitment,
            "n": self.n,
            "nonce_prefix": self.nonce_prefix,
            "plaintext_length": self.plaintext_length,
            "segment_count": self.segment_count,
            "segment_size": self.segment_size,
            "share_length": self.share_length,
            "shares": [
                {
                    "index": entry.index,
                    _entry_keys(self.version)[0]: entry.index_hash,
                    _entry_keys(self.version)[1]: entry.key_share_hash,
                }
                for entry in self.shares
            ],
            "signer": self.signer,
            "transfer_id": self.transfer_id,
            "version": self.version,
        }

    def encode(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def decode(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise FormatProblem("manifest is not valid JSON (corrupt)") from None
        manifest = _manifest_from_dict(data)
        if canonical_json(data) != raw:
            raise FormatProblem("manifest is not in canonical form (corrupt or altered)")
        return manifest


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII only (non-ASCII as \\uXXXX escapes)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def _expect(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FormatProblem(f"manifest field {key!r} must be a non-negative integer")
    elif not isinstance(value, kind):
        raise FormatProblem(f"manifest field {key!r} is missing or has the wrong type")
    return value


def _expect_hex(data: dict[str, Any], key: str, nbytes: int) -> str:
    value = _expect(data, key, str)
    if len(value) != 2 * nbytes or not re.fullmatch(r"[0-9a-f]*", value):
        raise FormatProblem(f"manifest field {key!r} must be {nbytes} bytes of lowercase hex")
    return value


def check_dataset_name(name: str) -> None:
    """A dataset name is one path component: it becomes OUTDIR/<name> on combine."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or len(name.encode("utf-8", "surrogatepass")) > 255
    ):
        raise FormatProblem(f"dataset name {name!r} is not a single file or folder name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatProblem(f"dataset name {name!r} is not valid UTF-8") from None


_MANIFEST_KEYS = {
    "algorithms",
    "created",
    "dataset",
    "format",
    "k",
    "key_commitment",
    "n",
    "nonce_prefix",
    "plaintext_length",
    "segment_count",
    "segment_size",
    "share_length",
    "shares",
    "signer",
    "transfer_id",
    "version",
}


def _manifest_from_dict(data: Any) -> Manifest:
    if not isinstance(data, dict):
        raise FormatProblem("manifest is not a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise FormatProblem("manifest is not an enclave share manifest")
    version = _expect(data, "version", int)
    if version not in SUPPORTED_VERSIONS:
        raise FormatProblem(f"manifest version {version} is not supported")
    if set(data) != _MANIFEST_KEYS:
        unknown = sorted(set(data) ^ _MANIFEST_KEYS)
        raise FormatProblem(f"manifest has missing or unknown fields: {', '.join(unknown)}")
    if data["algorithms"] != ALGORITHMS_BY_VERSION[version]:
        raise FormatProblem("manifest names algorithms this reader does not implement (corrupt?)")
    k = _expect(data, "k", int)
    n = _expect(data, "n", int)
    segment_size = _expect(data, "segment_size", int)
    try:
        check_parameters(k, n, segment_size)
    except FormatProblem as exc:
        raise FormatProblem(f"manifest: {exc}") from None
    plaintext_length = _expect(data, "plaintext_length", int)
    count = _expect(data, "segment_count", int)
    if plaintext_length == 0 or count != segment_count(plaintext_length, segment_size):
        raise FormatProblem("manifest segment count does not match its plaintext length")
    created = _expect(data, "created", str)
    if not _TIMESTAMP.match(created):
        raise FormatProblem("manifest field 'created' is not a UTC timestamp")
    dataset = _expect(data, "dataset", dict)
    if set(dataset) != {"kind", "name"} or dataset["kind"] not in DATASET_KINDS:
        raise FormatProblem("manifest field 'dataset' must have a kind (dir/file) and a name")
    if not isinstance(dataset["name"], str):
        raise FormatProblem("manifest dataset name is not a string")
    check_dataset_name(dataset["name"])
    shares = _expect(data, "shares", list)
    if len(shares) != n:
        raise FormatProblem(f"manifest lists {len(shares)} shares, expected n={n}")
    entries = []
    index_key, key_share_key = _entry_keys(version)
    for position, entry in enumerate(shares, start=1):
        if not isinstance(entry, dict) or set(entry) != {"index", index_key, key_share_key}:
            raise FormatProblem(f"manifest entry for share {position} is malformed")
        if entry["index"] != position or isinstance(entry["index"], bool):
            raise FormatProblem(f"manifest share entries are out of order at {position}")
        for key in (index_key, key_share_key):
            if not isinstance(entry[key], str) or not _HEX64.match(entry[key]):
                raise FormatProblem(f"manifest entry for share {position} has a bad {key}")
        entries.append(ShareEntry(position, entry[index_key], entry[key_share_key]))
    return Manifest(
        transfer_id=_expect_hex(data, "transfer_id", TRANSFER_ID_LEN),
        created=created,
        k=k,
        n=n,
        segment_size=segment_size,
        segment_count=count,
        plaintext_length=plaintext_length,
        share_length=_expect(data, "share_length", int),
        nonce_prefix=_expect_hex(data, "nonce_prefix", NONCE_PREFIX_LEN),
        dataset_name=dataset["name"],
        dataset_kind=dataset["kind"],
        signer=_expect_hex(data, "signer", 32),
        key_commitment=_expect_hex(data, "key_commitment", 32),
        shares=tuple(entries),
        version=version,
    )


def solve_share_length(build: Any) -> tuple[Manifest, bytes]:
    """Find the share length that the manifest, which contains it, implies.

    ``build(share_length)`` returns a Manifest; the manifest's own length feeds back
    into the share length, so iterate to the fixed point (it converges because the
    length only grows with the number of digits, which is monotone).
    """
    share_length = 0
    for _ in range(32):
        manifest = build(share_length)
        raw = manifest.encode()
        actual = manifest.layout(len(raw)).share_length
        if actual == share_length:
            return manifest, raw
        share_length = actual
    raise RuntimeError("share length did not converge")  # unreachable in practice
