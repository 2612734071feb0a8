"""Verifying a share from block digests taken as its bytes arrived gives verify_share's verdict."""

import random
import shutil

import pytest

from secret_sharing import (
    BlockDigester,
    ShareError,
    ShareIntegrityError,
    read_share_info,
    verify_share,
    verify_share_digests,
)
from secret_sharing import format as fmt

from .test_tampering import PARTS, flip_bit, part_offsets


@pytest.fixture
def transfer(multi_segment_study, split_transfer):
    """Three 1 MiB segments per share, so a block can break in the middle of the stream."""
    return split_transfer(multi_segment_study, 3, 5)


def fed(digester: BlockDigester, data: bytes, seed: int) -> BlockDigester:
    """Feed ``data`` from the digester's position in pieces of random size (1 byte..300 KB)."""
    chance = random.Random(seed)
    while digester.position < len(data):
        start = digester.position
        digester.feed(start, data[start : start + chance.choice((1, 7, 4096, 65536, 300_000))])
    return digester


def digester_for(share, seed: int = 0, data: bytes | None = None) -> BlockDigester:
    """A receiver's digester: built from the share as announced, fed the bytes that arrived."""
    digester = BlockDigester.for_share(read_share_info(share))
    return fed(digester, share.read_bytes() if data is None else data, seed)


def verdict(check, *args):
    try:
        return check(*args).index
    except ShareError as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize("seed", range(4))
def test_good_share_fed_in_random_pieces_verifies_like_reading_it(transfer, provider_key, seed):
    share = transfer.shares[seed]
    digester = digester_for(share, seed)
    info = read_share_info(share)
    layout = info.layout
    data = share.read_bytes()
    assert digester.complete and digester.position == len(data)
    assert digester.digests == [
        fmt.block_hash(
            info.header.transfer_id,
            info.index,
            segment,
            data[
                layout.block_offset(segment) : layout.block_offset(segment)
                + layout.block_length(segment)
            ],
        )
        for segment in range(layout.segment_count)
    ]
    key = provider_key.public_key()
    assert verify_share_digests(share, key, digester) == verify_share(share, key)


@pytest.mark.parametrize("part", PARTS)
def test_any_tampered_part_gets_the_same_error_as_verify_share(
    tmp_path, transfer, provider_key, part
):
    pristine = transfer.shares[1]
    victim = tmp_path / "share-2"
    shutil.copyfile(pristine, victim)
    flip_bit(victim, part_offsets(pristine)[part])
    # The receiver's digester comes from the prologue (here: the pristine share's layout),
    # its bytes from what actually arrived.
    digester = BlockDigester.for_share(read_share_info(pristine))
    fed(digester, victim.read_bytes(), seed=3)
    key = provider_key.public_key()
    expected = verdict(verify_share, victim, key)
    assert isinstance(expected, tuple), f"flipping the {part} went unnoticed"
    assert verdict(verify_share_digests, victim, key, digester) == expected


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_a_block_that_arrived_damaged_is_named_by_its_segment(transfer, provider_key, segment):
    share = transfer.shares[0]
    layout = read_share_info(share).layout
    arrived = bytearray(share.read_bytes())
    arrived[layout.block_offset(segment) + layout.block_length(segment) - 1] ^= 0x01
    digester = digester_for(share, data=bytes(arrived))
    # The file itself is intact: the verdict comes from the bytes as they were fed.
    with pytest.raises(
        ShareIntegrityError,
        match=f"data block of segment {segment} does not match its signed hash",
    ):
        verify_share_digests(share, provider_key.public_key(), digester)


def test_resumed_digester_gives_the_same_digests(transfer):
    share = transfer.shares[2]
    data = share.read_bytes()
    whole = digester_for(share, seed=1)
    cut = read_share_info(share).layout.block_offset(1) + 1000  # inside segment 1
    first = BlockDigester.for_share(read_share_info(share))
    first.feed(0, data[:cut])
    resumed = BlockDigester.for_share(read_share_info(share))  # a restarted receiver
    resumed.feed(0, data[:cut])
    resumed.feed(cut, data[cut:])
    assert resumed.digests == whole.digests and not first.complete


def test_bytes_must_come_in_order(transfer):
    digester = BlockDigester.for_share(read_share_info(transfer.shares[0]))
    digester.feed(0, b"\0" * 100)
    with pytest.raises(ValueError, match="offset 50, expected 100"):
        digester.feed(50, b"\0")
    with pytest.raises(ValueError, match="offset 200, expected 100"):
        digester.feed(200, b"\0")


def test_incomplete_or_foreign_digester_falls_back_to_reading_the_blocks(
    tmp_path, transfer, provider_key
):
    share = transfer.shares[3]
    key = provider_key.public_key()
    info = read_share_info(share)
    partial = BlockDigester.for_share(info)
    partial.feed(0, share.read_bytes()[: info.layout.block_offset(2)])
    other_layout = fmt.Layout(
        info.k,
        info.manifest.segment_size,
        info.manifest.plaintext_length + 1,
        len(info.manifest_bytes),
    )
    foreign = fed(
        BlockDigester(other_layout, info.header.transfer_id, info.index), share.read_bytes(), seed=2
    )
    other_index = fed(
        BlockDigester(info.layout, info.header.transfer_id, 1), share.read_bytes(), seed=2
    )
    for digester in (partial, foreign, other_index):
        assert digester.digests_for(info) is None
        assert verify_share_digests(share, key, digester) == verify_share(share, key)
    # and the fallback reads the blocks: damage on disk is still found
    victim = tmp_path / "share-4"
    shutil.copyfile(share, victim)
    flip_bit(victim, part_offsets(share)["data block, middle segment"])
    with pytest.raises(ShareIntegrityError, match="segment 1 does not match"):
        verify_share_digests(victim, key, partial)
