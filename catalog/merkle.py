"""RFC 6962 Merkle trees over SHA-256: leaf and node hashes, roots, audit paths, consistency.

Pure computation, no I/O. Hashes are 32-byte ``bytes``; leaf indexes count from 0 and tree
sizes are leaf counts, as in RFC 6962 section 2.1 (the tree head of an empty tree is the
SHA-256 of nothing). ``Frontier`` is the compact range of a growing tree (the roots of its
perfect subtrees, largest first), so a log's root at any size is computed incrementally and
the state between checkpoints is a few hundred bytes. Verification follows RFC 9162
sections 2.1.3.2 and 2.1.4.2, which check the same audit paths RFC 6962 defines.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
_SIZE_BYTES = 8
# extend_packed hashes at most 2**16 leaves (2 MiB of hashes) as one block.
_MAX_CHUNK_HEIGHT = 16

_sha256 = hashlib.sha256


class MerkleError(ValueError):
    """A tree size, index, proof or serialised frontier that cannot be right."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one log entry."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return _sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2): where RFC 6962 splits a tree."""
    if n < 2:
        raise MerkleError(f"a tree of {n} leaves has no split point")
    return 1 << ((n - 1).bit_length() - 1)


class Frontier:
    """The compact range [0, size) of a tree: enough to append leaves and compute the root.

    It holds one hash per set bit of ``size``: the roots of the perfect subtrees the tree
    decomposes into, largest (leftmost) first. Appending costs one leaf's worth of node
    hashes amortised (at most log2(size)); ``to_bytes``/``from_bytes`` store it.
    """

    __slots__ = ("_nodes", "size")

    def __init__(self) -> None:
        self.size = 0
        self._nodes: list[bytes] = []

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash at index ``size``."""
        if len(leaf) != HASH_SIZE:
            raise MerkleError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        size = self.size
        nodes = self._nodes
        node = leaf
        while size & 1:
            node = _sha256(NODE_PREFIX + nodes.pop() + node).digest()
            size >>= 1
        nodes.append(node)
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append every leaf hash of ``leaves`` in order."""
        for leaf in leaves:
            self.append(leaf)

    def extend_packed(self, packed: bytes) -> None:
        """Append the leaf hashes concatenated in ``packed`` (32 bytes each).

        Hashes whole perfect subtrees level by level, which is the same tree as appending
        one leaf at a time with less interpreter work per node."""
        if len(packed) % HASH_SIZE:
            raise MerkleError(
                f"packed leaf hashes are {len(packed)} bytes, not a multiple of {HASH_SIZE}"
            )
        total = len(packed) // HASH_SIZE
        view = memoryview(packed)
        done = 0
        while done < total:
            # The largest perfect subtree that starts at the current size and fits.
            aligned = (self.size & -self.size).bit_length() - 1 if self.size else _MAX_CHUNK_HEIGHT
            height = min(aligned, (total - done).bit_length() - 1, _MAX_CHUNK_HEIGHT)
            count = 1 << height
            start = done * HASH_SIZE
            level = [
                bytes(view[i : i + HASH_SIZE])
                for i in range(start, start + count * HASH_SIZE, HASH_SIZE)
            ]
            while len(level) > 1:
                level = [
                    _sha256(NODE_PREFIX + a + b).digest()
                    for a, b in zip(level[0::2], level[1::2], strict=True)
                ]
            self._append_subtree(level[0], height)
            done += count

    def _append_subtree(self, node: bytes, height: int) -> None:
        # A perfect subtree of 2**height leaves at an index that is a multiple of its size.
        size = self.size >> height
        nodes = self._nodes
        while size & 1:
            node = _sha256(NODE_PREFIX + nodes.pop() + node).digest()
            size >>= 1
        nodes.append(node)
        self.size += 1 << height

    def root(self) -> bytes:
        """The RFC 6962 tree head of the ``size`` leaves appended so far."""
        if not self._nodes:
            return EMPTY_ROOT
        nodes = self._nodes
        node = nodes[-1]
        for left in reversed(nodes[:-1]):
            node = _sha256(NODE_PREFIX + left + node).digest()
        return node

    def copy(self) -> Frontier:
        """An independent frontier at the same size."""
        other = Frontier()
        other.size = self.size
        other._nodes = list(self._nodes)
        return other

    def to_bytes(self) -> bytes:
        """8-byte big-endian size, then the subtree roots, largest first."""
        return self.size.to_bytes(_SIZE_BYTES, "big") + b"".join(self._nodes)

    @classmethod
    def from_bytes(cls, data: bytes) -> Frontier:
        """The frontier ``to_bytes`` wrote; raises MerkleError for anything else."""
        if len(data) < _SIZE_BYTES:
            raise MerkleError(f"a serialised frontier has at least {_SIZE_BYTES} bytes")
        size = int.from_bytes(data[:_SIZE_BYTES], "big")
        count = size.bit_count()
        if len(data) != _SIZE_BYTES + count * HASH_SIZE:
            raise MerkleError(
                f"a frontier of size {size} holds {count} hashes, not "
                f"{(len(data) - _SIZE_BYTES) / HASH_SIZE:g}"
            )
        frontier = cls()
        frontier.size = size
        frontier._nodes = [
            bytes(data[i : i + HASH_SIZE]) for i in range(_SIZE_BYTES, len(data), HASH_SIZE)
        ]
        return frontier

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self.size == other.size and self._nodes == other._nodes

    def __repr__(self) -> str:
        return f"Frontier(size={self.size}, root={self.root().hex()[:16]}...)"


def root(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH(D[n]) of RFC 6962 section 2.1 over the given leaf hashes (EMPTY_ROOT for none)."""
    frontier = Frontier()
    frontier.extend(leaf_hashes)
    return frontier.root()


def unpack(packed: bytes) -> list[bytes]:
    """Concatenated 32-byte hashes as a list."""
    if len(packed) % HASH_SIZE:
        raise MerkleError(f"packed hashes are {len(packed)} bytes, not a multiple of {HASH_SIZE}")
    return [bytes(packed[i : i + HASH_SIZE]) for i in range(0, len(packed), HASH_SIZE)]


def _mth(hashes: Sequence[bytes], start: int, end: int) -> bytes:
    frontier = Frontier()
    frontier.extend_packed(b"".join(hashes[start:end]))
    return frontier.root()


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]) of RFC 6962 section 2.1.1: the audit path of leaf ``index``."""
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise MerkleError(f"leaf index {index} is outside a tree of {size} leaves")
    path: list[bytes] = []
    start, end, m = 0, size, index
    # Walk down from the root, collecting siblings; the path lists them leaf to root.
    while end - start > 1:
        k = split_point(end - start)
        if m < k:
            path.append(_mth(leaf_hashes, start + k, end))
            end = start + k
        else:
            path.append(_mth(leaf_hashes, start, start + k))
            start, m = start + k, m - k
    path.reverse()
    return path


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[n]) of RFC 6962 section 2.1.2: that the first ``old_size`` leaves'
    tree is a prefix of the whole tree (empty when old_size is 0 or n)."""
    size = len(leaf_hashes)
    if not 0 <= old_size <= size:
        raise MerkleError(f"old size {old_size} is outside 0..{size}")
    if old_size in (0, size):
        return []
    path: list[bytes] = []
    start, end, m, complete = 0, size, old_size, True
    while m != end - start:
        k = split_point(end - start)
        if m <= k:
            path.append(_mth(leaf_hashes, start + k, end))
            end = start + k
        else:
            path.append(_mth(leaf_hashes, start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:
        path.append(_mth(leaf_hashes, start, end))
    path.reverse()
    return path


class MerkleTree:
    """Every level of a tree kept in memory (2 x 32 bytes a leaf), for many proofs at once.

    Built once in about n node hashes; after that the root at any size, an audit path and a
    consistency proof each cost O(log^2 n) hashes instead of hashing the whole tree again."""

    def __init__(self, packed_leaves: bytes) -> None:
        if len(packed_leaves) % HASH_SIZE:
            raise MerkleError(
                f"packed leaf hashes are {len(packed_leaves)} bytes, not a multiple of {HASH_SIZE}"
            )
        self.size = len(packed_leaves) // HASH_SIZE
        self._levels: list[bytes] = [bytes(packed_leaves)]
        level = self._levels[0]
        while len(level) >= 2 * HASH_SIZE:
            view = memoryview(level)
            pairs = len(level) // (2 * HASH_SIZE)
            level = b"".join(
                _sha256(NODE_PREFIX + view[i : i + 2 * HASH_SIZE]).digest()
                for i in range(0, pairs * 2 * HASH_SIZE, 2 * HASH_SIZE)
            )
            self._levels.append(level)

    def leaf(self, index: int) -> bytes:
        """The hash of leaf ``index``."""
        if not 0 <= index < self.size:
            raise MerkleError(f"leaf index {index} is outside a tree of {self.size} leaves")
        return self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE]

    def _node(self, height: int, index: int) -> bytes:
        return self._levels[height][index * HASH_SIZE : (index + 1) * HASH_SIZE]

    def _range_root(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end): the perfect subtrees covering it, folded from the right."""
        nodes: list[bytes] = []
        while start < end:
            height = (start & -start).bit_length() - 1 if start else (end - start).bit_length()
            while (1 << height) > end - start:
                height -= 1
            nodes.append(self._node(height, start >> height))
            start += 1 << height
        node = nodes[-1]
        for left in reversed(nodes[:-1]):
            node = node_hash(left, node)
        return node

    def root(self, size: int | None = None) -> bytes:
        """The tree head of the first ``size`` leaves (all by default)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise MerkleError(f"size {size} is outside 0..{self.size}")
        return self._range_root(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]), as the module's ``inclusion_proof`` gives it."""
        size = self.size if size is None else size
        if not 0 < size <= self.size or not 0 <= index < size:
            raise MerkleError(f"leaf index {index} is outside a tree of {size} leaves")
        path: list[bytes] = []
        start, end, m = 0, size, index
        while end - start > 1:
            k = split_point(end - start)
            if m < k:
                path.append(self._range_root(start + k, end))
                end = start + k
            else:
                path.append(self._range_root(start, start + k))
                start, m = start + k, m - k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[size]), as the module's ``consistency_proof`` gives it."""
        size = self.size if size is None else size
        if not 0 <= old_size <= size <= self.size:
            raise MerkleError(f"old size {old_size} is outside 0..{size}")
        if old_size in (0, size):
            return []
        path: list[bytes] = []
        start, end, m, complete = 0, size, old_size, True
        while m != end - start:
            k = split_point(end - start)
            if m <= k:
                path.append(self._range_root(start + k, end))
                end = start + k
            else:
                path.append(self._range_root(start, start + k))
                start, m, complete = start + k, m - k, False
        if not complete:
            path.append(self._range_root(start, end))
        path.reverse()
        return path


def _same(a: bytes, b: bytes) -> bool:
    return len(a) == len(b) == HASH_SIZE and hmac.compare_digest(a, b)


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from ``leaf`` at ``index`` in a tree of ``size``;
    raises MerkleError when the proof has the wrong shape for that position."""
    if not 0 <= index < size:
        raise MerkleError(f"leaf index {index} is outside a tree of {size} leaves")
    if len(leaf) != HASH_SIZE or any(len(p) != HASH_SIZE for p in proof):
        raise MerkleError(f"every hash in an inclusion proof is {HASH_SIZE} bytes")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise MerkleError(f"inclusion proof for leaf {index} of {size} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleError(f"inclusion proof for leaf {index} of {size} is too short")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> bool:
    """Whether ``proof`` shows ``leaf`` at ``index`` in the tree of ``size`` with ``root_hash``."""
    try:
        return _same(root_from_inclusion_proof(leaf, index, size, proof), root_hash)
    except MerkleError:
        return False


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree (old_size, old_root) is a prefix of (new_size, new_root)."""
    if not 0 <= old_size <= new_size:
        return False
    if any(len(p) != HASH_SIZE for p in proof):
        return False
    if old_size == new_size:
        return not proof and _same(old_root, new_root)
    if old_size == 0:
        return not proof  # the empty tree is a prefix of every tree
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a perfect subtree: its root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and _same(fr, old_root) and _same(sr, new_root)
