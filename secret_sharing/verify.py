"""Hashing a share's data blocks as its bytes arrive, so a receiver need not read them again.

A receiver learns the signed manifest (hence the layout) from the upload prologue before the
first data byte. Feeding every stored byte to a ``BlockDigester`` computes each block's hash
on the way in; ``verify_share_digests`` then compares those digests with the signed block-hash
index instead of reading the data blocks back from disk. Everything else a share must pass
(structure, signature, index, key share) is still read from the file, in the same order and
with the same messages as ``verify_share``.

``BlockDigester`` is pure: no I/O, no clock; the caller decides where the bytes come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secret_sharing import format as fmt
from secret_sharing.combine import ShareInfo, verify_share


class BlockDigester:
    """Incremental hash (the share's format version's) of every data block of one share,
    fed in file order.

    ``feed`` takes consecutive pieces of the share file from byte 0, cut anywhere; bytes
    before the first block (the header) and after the last (index, key share, manifest,
    signature, footer) are skipped, since ``verify_share`` reads and checks those itself.
    """

    def __init__(
        self,
        layout: fmt.Layout,
        transfer_id: bytes,
        share_index: int,
        version: int = fmt.FORMAT_VERSION,
    ) -> None:
        self.layout = layout
        self.transfer_id = bytes(transfer_id)
        self.share_index = share_index
        self.version = version
        self._position = 0
        self._digests: list[bytes] = []
        self._hasher: Any = None  # the block being hashed, if one is open
        self._block_end = 0  # file offset where that block ends

    @classmethod
    def for_share(cls, info: ShareInfo) -> BlockDigester:
        """A digester for the share that ``info`` (from the prologue or the file) describes."""
        return cls(info.layout, info.header.transfer_id, info.index, info.version)

    @property
    def position(self) -> int:
        """The file offset the next ``feed`` must start at (bytes seen so far)."""
        return self._position

    @property
    def complete(self) -> bool:
        """Whether every data block has been hashed."""
        return len(self._digests) == self.layout.segment_count

    @property
    def digests(self) -> list[bytes]:
        """The finished blocks' digests, segment 0 first."""
        return list(self._digests)

    def feed(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Account for ``data``, the share's bytes at ``offset`` (which must be ``position``)."""
        if offset != self._position:
            raise ValueError(f"fed share bytes at offset {offset}, expected {self._position}")
        view = memoryview(data).cast("B")
        end = offset + len(view)
        self._position = end
        data_start, data_end = fmt.HEADER_LEN, self.layout.index_offset
        cursor = max(offset, data_start)
        stop = min(end, data_end)
        while cursor < stop:  # blocks are contiguous from HEADER_LEN to the index
            if self._hasher is None:
                segment = len(self._digests)
                self._hasher = fmt.block_hasher(
                    self.transfer_id, self.share_index, segment, self.version
                )
                self._block_end = self.layout.block_offset(segment) + self.layout.block_length(
                    segment
                )
            upto = min(stop, self._block_end)
            self._hasher.update(view[cursor - offset : upto - offset])
            cursor = upto
            if cursor == self._block_end:
                self._digests.append(self._hasher.digest())
                self._hasher = None

    def digests_for(self, info: ShareInfo) -> list[bytes] | None:
        """All block digests, if they were computed for exactly the share ``info`` describes.

        ``None`` when the digester is incomplete or was built for another layout, transfer or
        index (say, a prologue whose manifest differs from the tail that arrived): the caller
        then reads the blocks from the file, so the verdict never depends on the digester.
        """
        same_share = (
            self.layout == info.layout
            and self.transfer_id == info.header.transfer_id
            and self.share_index == info.index
            and self.version == info.version
        )
        return self.digests if same_share and self.complete else None


def verify_share_digests(
    path: Path, verify_key: Ed25519PublicKey, digester: BlockDigester
) -> ShareInfo:
    """``verify_share`` for a share whose data blocks ``digester`` hashed as they were stored:
    same checks, order and errors, without reading the blocks again (unless the digester does
    not cover exactly this file). Bytes changed on disk after they were hashed are caught by
    reconstruction: the segment fails its GCM tag, and the blocks are then hashed to name
    this share."""
    return verify_share(path, verify_key, digester)
