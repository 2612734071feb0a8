"""RFC 6962 Merkle trees: the certificate-transparency test vectors, and pymerkle as a second opinion.

The vectors are the ones every CT implementation tests against (transparency-dev/merkle
``testonly/constants.go`` and ``proof/verify_test.go``, formerly in google/trillian and
certificate-transparency-go): eight leaves, the tree head at each size 0..8, and audit and
consistency paths. pymerkle 7 is an independent RFC 6962 implementation; its inclusion path is
the leaf hash followed by the RFC audit path.
"""

from __future__ import annotations

import hashlib
import random

import pymerkle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog import merkle
from catalog.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleError,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)


def h(hex_digest: str) -> bytes:
    return bytes.fromhex(hex_digest)


LEAVES = [
    h(x)
    for x in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
LEAF_HASHES = [leaf_hash(leaf) for leaf in LEAVES]
# Tree heads for sizes 0..8 (testonly/constants.go RootHashes).
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]
# Leaf hashes (level 0 of testonly/constants.go NodeHashes).
NODE_LEVEL_0 = [
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
    h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
    h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
    h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
    h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
    h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
]
# (leaf index from 0, tree size, audit path) from proof/verify_test.go (which counts from 1).
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]
# (old size, new size, consistency path) from proof/verify_test.go.
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

hash_lists = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70)


def test_leaf_and_node_hashes_carry_the_rfc_6962_prefixes():
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert (
        node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()
    )
    assert LEAF_HASHES == NODE_LEVEL_0


@pytest.mark.parametrize("size", range(9))
def test_roots_match_the_published_tree_heads_for_sizes_0_to_8(size):
    assert root(LEAF_HASHES[:size]) == ROOTS[size]
    frontier = Frontier()
    frontier.extend(LEAF_HASHES[:size])
    assert frontier.root() == ROOTS[size]


def test_the_empty_tree_head_is_the_hash_of_nothing():
    assert root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest() == Frontier().root()


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_proofs_match_the_published_audit_paths(index, size, path):
    assert inclusion_proof(index, LEAF_HASHES[:size]) == path
    assert verify_inclusion(LEAF_HASHES[index], index, size, path, ROOTS[size])


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_a_corrupted_inclusion_proof_is_refused(index, size, path):
    good_root, leaf = ROOTS[size], LEAF_HASHES[index]
    wrong = [
        (leaf, index + 1, size, path, good_root),
        (leaf, index, size * 2, path, good_root),
        (leaf, index, size, path, EMPTY_ROOT),
        (leaf_hash(b"WrongLeaf"), index, size, path, good_root),
        (leaf, index, size, [*path, good_root], good_root),
        (leaf, index, size, [good_root, *path], good_root),
    ]
    if index > 0:
        wrong.append((leaf, index - 1, size, path, good_root))
    if size > 1:
        wrong.append((leaf, index, size // 2, path, good_root))
    if path:
        wrong.append((leaf, index, size, path[:-1], good_root))
    for i in range(len(path)):
        flipped = list(path)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        wrong.append((leaf, index, size, flipped, good_root))
    for probe in wrong:
        assert not verify_inclusion(*probe), probe


@pytest.mark.parametrize(("old", "new", "path"), CONSISTENCY)
def test_consistency_proofs_match_the_published_paths(old, new, path):
    assert consistency_proof(old, LEAF_HASHES[:new]) == path
    assert verify_consistency(old, new, ROOTS[old], ROOTS[new], path)


@pytest.mark.parametrize(("old", "new", "path"), [c for c in CONSISTENCY if c[2]])
def test_a_corrupted_consistency_proof_is_refused(old, new, path):
    r1, r2 = ROOTS[old], ROOTS[new]
    wrong = [
        (old - 1, new, r1, r2, path),
        (old + 1, new, r1, r2, path),
        (old ^ 2, new, r1, r2, path),
        (old, new * 2, r1, r2, path),
        (old, new // 2, r1, r2, path),
        (old, new, EMPTY_ROOT, r2, path),
        (old, new, r1, EMPTY_ROOT, path),
        (old, new, r2, r1, path),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*path, r1]),
        (old, new, r1, r2, [*path, r2]),
        (old, new, r1, r2, [r1, *path]),
        (old, new, r1, r2, [path[0], *path]),
        (old, new, r1, r2, path[:-1]),
    ]
    for i in range(len(path)):
        flipped = list(path)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        wrong.append((old, new, r1, r2, flipped))
    for probe in wrong:
        assert not verify_consistency(*probe), probe[:2]


def test_trivial_consistency_needs_an_empty_proof_and_equal_roots():
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    assert verify_consistency(3, 3, ROOTS[3], ROOTS[3], [])
    assert not verify_consistency(3, 3, ROOTS[3], ROOTS[4], [])
    assert not verify_consistency(3, 3, ROOTS[3], ROOTS[3], [EMPTY_ROOT])
    assert not verify_consistency(4, 3, ROOTS[4], ROOTS[3], [])


def test_out_of_range_requests_name_the_index_and_size():
    with pytest.raises(MerkleError, match="leaf index 8 is outside a tree of 8 leaves"):
        inclusion_proof(8, LEAF_HASHES)
    with pytest.raises(MerkleError, match="old size 9 is outside 0..8"):
        consistency_proof(9, LEAF_HASHES)
    assert not verify_inclusion(LEAF_HASHES[0], 0, 0, [], EMPTY_ROOT)


def test_a_frontier_survives_serialisation_and_refuses_garbage():
    frontier = Frontier()
    frontier.extend(LEAF_HASHES[:7])
    data = frontier.to_bytes()
    assert len(data) == 8 + 3 * 32  # 7 = 4 + 2 + 1: three perfect subtrees
    again = Frontier.from_bytes(data)
    assert again == frontier and again.root() == ROOTS[7]
    again.append(LEAF_HASHES[7])
    assert again.root() == ROOTS[8] and frontier.root() == ROOTS[7]
    with pytest.raises(MerkleError, match="holds 3 hashes"):
        Frontier.from_bytes(data[:-32])
    with pytest.raises(MerkleError, match="at least 8 bytes"):
        Frontier.from_bytes(b"\x00")
    with pytest.raises(MerkleError, match="32 bytes, not 31"):
        frontier.append(b"x" * 31)


@settings(max_examples=60, deadline=None)
@given(hash_lists, st.integers(min_value=0, max_value=70))
def test_a_frontier_continued_from_storage_gives_the_whole_trees_root(hashes, cut):
    cut = min(cut, len(hashes))
    first = Frontier()
    first.extend(hashes[:cut])
    resumed = Frontier.from_bytes(first.to_bytes())
    resumed.extend_packed(b"".join(hashes[cut:]))
    assert resumed.size == len(hashes)
    assert resumed.root() == root(hashes) == _recursive_mth(hashes)


@settings(max_examples=60, deadline=None)
@given(hash_lists, st.data())
def test_every_generated_proof_verifies(hashes, data):
    n = len(hashes)
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    old = data.draw(st.integers(min_value=0, max_value=n))
    assert verify_inclusion(hashes[index], index, n, inclusion_proof(index, hashes), root(hashes))
    assert verify_consistency(
        old, n, root(hashes[:old]), root(hashes), consistency_proof(old, hashes)
    )


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=3000))
def test_appending_packed_leaves_in_blocks_builds_the_same_tree_as_one_by_one(start, count):
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(start + count)]
    one_by_one, packed = Frontier(), Frontier()
    one_by_one.extend(hashes)
    packed.extend(hashes[:start])
    packed.extend_packed(b"".join(hashes[start:]))
    assert packed == one_by_one and packed.root() == one_by_one.root()


@settings(max_examples=60, deadline=None)
@given(hash_lists, st.data())
def test_a_tree_kept_in_memory_gives_the_same_roots_and_proofs(hashes, data):
    tree = MerkleTree(b"".join(hashes))
    n = len(hashes)
    size = data.draw(st.integers(min_value=1, max_value=n))
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    old = data.draw(st.integers(min_value=0, max_value=size))
    assert tree.root() == root(hashes) and tree.root(size) == root(hashes[:size])
    assert tree.root(0) == EMPTY_ROOT and tree.leaf(index) == hashes[index]
    assert tree.inclusion_proof(index, size) == inclusion_proof(index, hashes[:size])
    assert tree.consistency_proof(old, size) == consistency_proof(old, hashes[:size])


def test_a_tree_kept_in_memory_matches_the_published_vectors():
    tree = MerkleTree(b"".join(LEAF_HASHES))
    assert [tree.root(n) for n in range(9)] == ROOTS
    for index, size, path in INCLUSION:
        assert tree.inclusion_proof(index, size) == path
    for old, new, path in CONSISTENCY:
        assert tree.consistency_proof(old, new) == path


def _recursive_mth(hashes: list[bytes]) -> bytes:
    """MTH exactly as RFC 6962 section 2.1 writes it, for comparison."""
    if not hashes:
        return EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = merkle.split_point(len(hashes))
    return node_hash(_recursive_mth(hashes[:k]), _recursive_mth(hashes[k:]))


def test_roots_and_proofs_agree_with_pymerkle_for_every_size_up_to_300():
    rng = random.Random(6962)
    entries = [rng.randbytes(rng.randrange(0, 40)) for _ in range(300)]
    hashes = [leaf_hash(e) for e in entries]
    tree = pymerkle.InmemoryTree(algorithm="sha256")
    for size in range(1, 301):
        tree.append_entry(entries[size - 1])
        ours = root(hashes[:size])
        assert tree.get_root(size) == ours, size
        for index in {0, size - 1, rng.randrange(size), rng.randrange(size)}:
            theirs = tree.prove_inclusion(index + 1, size)  # pymerkle counts from 1
            path = inclusion_proof(index, hashes[:size])
            assert theirs.path == [hashes[index], *path], (index, size)
            pymerkle.verify_inclusion(hashes[index], ours, theirs)
            assert verify_inclusion(hashes[index], index, size, path, ours)
        for old in {1, size, rng.randint(1, size)}:
            old_root = tree.get_root(old)
            pymerkle.verify_consistency(old_root, ours, tree.prove_consistency(old, size))
            proof = consistency_proof(old, hashes[:size])
            assert verify_consistency(old, size, old_root, ours, proof), (old, size)
