"""Share format versions: 2 (BLAKE3) is written, 1 (SHA-256) is still read.

A provider whose client predates version 2 keeps sending version 1 shares; the enclave must
verify, combine and name corrupt blocks in both. Each version's hashes are recomputed here
from the specification (docs/share-format.md section 7), not through the library's helpers.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import blake3
import pytest

from secret_sharing import (
    ShareIntegrityError,
    ShareParameterError,
    combine_shares,
    read_share_info,
    split_dataset,
    verify_share,
)
from secret_sharing import format as fmt
from secret_sharing.format import MIB
from secret_sharing.verify import BlockDigester

from .conftest import pseudo_random_bytes, tree_of, write_tree

SPEC_HASH = {
    1: lambda data: hashlib.sha256(data).digest(),
    2: lambda data: blake3.blake3(data).digest(),
}


@pytest.fixture
def study(tmp_path):
    return write_tree(
        tmp_path / "study",
        {"a.dcm": pseudo_random_bytes(2 * MIB + 17, 1), "b.txt": b"notes\n"},
    )


def split_as(version: int, study, out, provider_key):
    return split_dataset(
        study, out, k=2, n=3, signing_key=provider_key, segment_size=MIB, format_version=version
    )


@pytest.mark.parametrize("version", [1, 2])
def test_each_version_round_trips_from_every_k_subset(version, study, tmp_path, provider_key):
    result = split_as(version, study, tmp_path / "out", provider_key)
    verify = provider_key.public_key()
    for number, subset in enumerate(itertools.combinations(result.share_paths, 2)):
        for path in subset:
            assert verify_share(path, verify).version == version
        rebuilt = combine_shares(list(subset), tmp_path / f"rebuilt-{number}", verify_key=verify)
        assert tree_of(rebuilt.output_path) == tree_of(study)


@pytest.mark.parametrize("version", [1, 2])
def test_block_and_index_hashes_follow_the_specification(version, study, tmp_path, provider_key):
    result = split_as(version, study, tmp_path / "out", provider_key)
    path = result.share_paths[1]
    info = read_share_info(path)
    raw = path.read_bytes()
    tid, j = info.header.transfer_id, info.index
    layout = info.layout
    digests = []
    for segment in range(layout.segment_count):
        offset = layout.block_offset(segment)
        block = raw[offset : offset + layout.block_length(segment)]
        prefix = f"enclave-share/v{version}/block".encode() + b"\x00"
        digests.append(
            SPEC_HASH[version](prefix + tid + bytes((j,)) + segment.to_bytes(8, "big") + block)
        )
    index = raw[layout.index_offset : layout.index_offset + layout.index_length]
    assert index == b"".join(digests)
    manifest = json.loads(info.manifest_bytes)
    assert manifest["version"] == version
    assert manifest["algorithms"]["hash"] == {1: "SHA-256", 2: "BLAKE3"}[version]
    entry = manifest["shares"][j - 1]
    index_key = {1: "index_sha256", 2: "index_hash"}[version]
    prefix = f"enclave-share/v{version}/index".encode() + b"\x00"
    assert entry[index_key] == SPEC_HASH[version](prefix + tid + bytes((j,)) + index).hex()


@pytest.mark.parametrize("version", [1, 2])
def test_a_corrupt_block_is_named_in_either_version(version, study, tmp_path, provider_key):
    result = split_as(version, study, tmp_path / "out", provider_key)
    path = result.share_paths[0]
    data = bytearray(path.read_bytes())
    data[fmt.HEADER_LEN + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShareIntegrityError, match="segment 0"):
        verify_share(path, provider_key.public_key())


@pytest.mark.parametrize("version", [1, 2])
def test_receiver_digests_use_the_shares_version(version, study, tmp_path, provider_key):
    result = split_as(version, study, tmp_path / "out", provider_key)
    path = result.share_paths[2]
    info = read_share_info(path)
    digester = BlockDigester.for_share(info)
    raw = path.read_bytes()
    for start in range(0, len(raw), 100_000):  # pieces cut anywhere, as HTTP delivers them
        digester.feed(start, raw[start : start + 100_000])
    assert verify_share(path, provider_key.public_key(), digester=digester).index == 3
    other = BlockDigester(info.layout, info.header.transfer_id, info.index, version=3 - version)
    assert other.digests_for(info) is None  # a digester of the other version is not used


def test_versions_cannot_be_mixed_within_a_share(study, tmp_path, provider_key):
    result = split_as(2, study, tmp_path / "out", provider_key)
    path = result.share_paths[0]
    data = bytearray(path.read_bytes())
    data[9] = 1  # the header now claims version 1; manifest and footer say 2
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="format versions"):
        read_share_info(path)


def test_an_unknown_version_to_write_is_refused(study, tmp_path, provider_key):
    with pytest.raises(ShareParameterError, match="version 7"):
        split_as(7, study, tmp_path / "out", provider_key)
