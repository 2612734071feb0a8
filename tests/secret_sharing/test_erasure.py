"""The parity blocks computed with ISA-L are zfec's, byte for byte, for any k-of-n, and
ISA-L's decoding gives what zfec's decoder gives for any k of the n blocks.

The share format is defined by zfec's code (docs/share-format.md section 5); ISA-L only
computes it faster. If these bytes ever differed, shares split here could not be rebuilt
by a receiver that decodes with zfec, so the comparison is against zfec itself.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import pytest
import zfec
from hypothesis import given, settings
from hypothesis import strategies as st

from secret_sharing import erasure
from secret_sharing.erasure import (
    ErasureDecoder,
    ParityEncoder,
    isal_available,
    zfec_coefficients,
)

needs_isal = pytest.mark.skipif(
    not isal_available(),
    reason="ISA-L (Debian libisal2, installed by `make system-deps`) is missing",
)

SHAPES = [(1, 2), (2, 3), (3, 5), (4, 6), (5, 12), (10, 20), (17, 255), (200, 255), (254, 255)]


@contextlib.contextmanager
def zfec_only() -> Iterator[None]:
    """zfec computes everything, as on a machine without libisal2."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(erasure.USE_ISAL_ENV, "0")
        erasure._isal.cache_clear()
        try:
            yield
        finally:
            erasure._isal.cache_clear()


def primary_blocks(k: int, length: int, seed: int) -> list[bytearray]:
    rng = random.Random(seed)
    return [bytearray(rng.randbytes(length)) for _ in range(k)]


def zfec_parity(k: int, n: int, primaries: list) -> list[bytes]:
    return [
        bytes(b)
        for b in zfec.Encoder(k, n).encode([bytes(p) for p in primaries], list(range(k, n)))
    ]


@needs_isal
@pytest.mark.parametrize("k,n", SHAPES)
def test_isal_parity_is_zfec_parity(k, n):
    encoder = ParityEncoder(k, n)
    assert encoder.engine == "isa-l"
    for length in (1, 31, 64, 1000, 4099):  # below, at and across ISA-L's 32/64-byte lanes
        primaries = primary_blocks(k, length, seed=k * 1000 + n + length)
        parity = encoder.encode(primaries)
        assert [bytes(p) for p in parity] == zfec_parity(k, n, primaries), (k, n, length)


@needs_isal
def test_isal_parity_of_a_full_segment_matches_and_decodes_with_zfec():
    k, n = 3, 5
    block = -(-(4 * 1024 * 1024 + 16) // k)  # a default 4 MiB segment plus its GCM tag
    buffer = bytearray(random.Random(7).randbytes(block * k))
    view = memoryview(buffer)
    primaries = [view[i * block : (i + 1) * block] for i in range(k)]
    parity = ParityEncoder(k, n).encode(primaries)
    assert [bytes(p) for p in parity] == zfec_parity(k, n, primaries)
    # Any k of the n blocks rebuild the primaries with zfec's decoder (combine's fallback).
    blocks = list(primaries) + parity
    rebuilt = zfec.Decoder(k, n).decode([bytes(blocks[m]) for m in (1, 3, 4)], [1, 3, 4])
    assert b"".join(bytes(b) for b in rebuilt) == bytes(buffer)


@needs_isal
def test_read_only_primaries_are_accepted():
    primaries = [bytes(b) for b in primary_blocks(3, 100, seed=1)]
    assert [bytes(p) for p in ParityEncoder(3, 5).encode(primaries)] == zfec_parity(3, 5, primaries)


def test_coefficients_are_zfecs_matrix():
    """Row i, column j is the parity byte k+i of a unit block j; check one product."""
    k, n = 4, 7
    matrix = zfec_coefficients(k, n)
    assert len(matrix) == (n - k) * k
    assert all(matrix)  # a Cauchy-like systematic code has no zero coefficient here
    primaries = primary_blocks(k, 1, seed=3)
    expected = zfec_parity(k, n, primaries)
    assert ParityEncoder(k, n).encode(primaries)[0][0] == expected[0][0]


def test_without_isal_the_encoder_is_zfec(monkeypatch):
    monkeypatch.setenv(erasure.USE_ISAL_ENV, "0")
    erasure._isal.cache_clear()
    try:
        encoder = ParityEncoder(3, 5)
        assert encoder.engine == "zfec"
        primaries = primary_blocks(3, 777, seed=5)
        assert [bytes(p) for p in encoder.encode(primaries)] == zfec_parity(3, 5, primaries)
    finally:
        monkeypatch.delenv(erasure.USE_ISAL_ENV)
        erasure._isal.cache_clear()


@pytest.mark.parametrize("k,n", [(3, 3), (1, 1)])
def test_no_parity_when_n_equals_k(k, n):
    assert ParityEncoder(k, n).encode(primary_blocks(k, 10, seed=0)) == []


@pytest.mark.parametrize("isal", ["1", "0"])
def test_blocks_of_unequal_length_are_refused(monkeypatch, isal):
    monkeypatch.setenv(erasure.USE_ISAL_ENV, isal)
    erasure._isal.cache_clear()
    encoder = ParityEncoder(2, 3)
    erasure._isal.cache_clear()
    with pytest.raises(ValueError, match="differ in length"):
        encoder.encode([bytearray(10), bytearray(11)])
    with pytest.raises(ValueError, match="3 primary blocks given, 2 expected"):
        encoder.encode([bytearray(10)] * 3)


# --- decoding: any k of the n blocks give back the primary blocks, as zfec's decoder does ---


def zfec_decoded(k: int, n: int, blocks: list, numbers: list[int]) -> list[bytes]:
    return [bytes(b) for b in zfec.Decoder(k, n).decode(list(blocks), list(numbers))]


@st.composite
def erasure_cases(draw):
    """A code, a block length and which k of the n blocks survive, in any order."""
    n = draw(st.integers(min_value=2, max_value=20))
    k = draw(st.integers(min_value=1, max_value=n - 1))
    numbers = draw(st.permutations(range(n)))[:k]
    length = draw(st.sampled_from([1, 2, 31, 32, 63, 64, 65, 100, 1000, 4099]))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    return k, n, numbers, length, seed


def decode_both_ways(engine: str, k: int, n: int, numbers: list[int], length: int, seed: int):
    """The primaries as the decoder under test rebuilt them, and as they were."""
    primaries = primary_blocks(k, length, seed)
    every_block = [bytes(p) for p in primaries] + zfec_parity(k, n, primaries)
    decoder = ErasureDecoder(k, n)
    assert decoder.engine == engine
    blocks = [every_block[number] for number in numbers]
    # Given primary blocks sit in their places already (as reconstruction reads them);
    # the places of the missing ones hold junk the decoder must overwrite.
    rebuilt = [
        bytearray(every_block[j]) if j in numbers else bytearray(b"\xee" * length) for j in range(k)
    ]
    decoder.decode_into(blocks, numbers, rebuilt)
    assert [bytes(b) for b in rebuilt] == zfec_decoded(k, n, blocks, numbers)
    return [bytes(b) for b in rebuilt], [bytes(p) for p in primaries]


@needs_isal
@settings(max_examples=300, deadline=None)
@given(erasure_cases())
def test_isal_decoding_matches_zfec_for_any_erasure_pattern(case):
    rebuilt, original = decode_both_ways("isa-l", *case)
    assert rebuilt == original


@settings(max_examples=60, deadline=None)
@given(erasure_cases())
def test_without_isal_zfec_decodes_any_erasure_pattern(case):
    with zfec_only():
        rebuilt, original = decode_both_ways("zfec", *case)
    assert rebuilt == original


@needs_isal
@pytest.mark.parametrize("k,n", [(17, 255), (200, 255), (128, 256)])
def test_isal_decodes_wide_codes_like_zfec(k, n):
    rng = random.Random(k + n)
    numbers = rng.sample(range(n), k)
    rebuilt, original = decode_both_ways("isa-l", k, n, numbers, 100, seed=n)
    assert rebuilt == original


@pytest.mark.parametrize("isal", ["1", "0"])
def test_decoding_a_full_segment_writes_only_the_missing_primaries(monkeypatch, isal):
    monkeypatch.setenv(erasure.USE_ISAL_ENV, isal)
    erasure._isal.cache_clear()
    try:
        k, n = 3, 5
        block = -(-(4 * 1024 * 1024 + 16) // k)
        buffer = bytearray(random.Random(11).randbytes(block * k))
        view = memoryview(buffer)
        primaries = [view[i * block : (i + 1) * block] for i in range(k)]
        parity = ParityEncoder(k, n).encode(primaries)
        target = bytearray(buffer)
        target[block : 2 * block] = bytes(block)  # block 1 lost
        out = memoryview(target)
        places = [out[i * block : (i + 1) * block] for i in range(k)]
        ErasureDecoder(k, n).decode_into([places[0], parity[1], places[2]], [0, 4, 2], places)
        assert target == buffer
    finally:
        erasure._isal.cache_clear()


def test_decoding_refuses_repeated_or_out_of_range_block_numbers():
    decoder = ErasureDecoder(3, 5)
    blocks = [bytearray(8) for _ in range(3)]
    with pytest.raises(ValueError, match=r"block numbers \[0, 0, 4\] are not 3 distinct"):
        decoder.decode_into(blocks, [0, 0, 4], [bytearray(8) for _ in range(3)])
    with pytest.raises(ValueError, match=r"block numbers \[0, 1, 5\] are not 3 distinct"):
        decoder.decode_into(blocks, [0, 1, 5], [bytearray(8) for _ in range(3)])
    with pytest.raises(ValueError, match="2 block numbers"):
        decoder.decode_into(blocks, [0, 1], [bytearray(8) for _ in range(3)])
    with pytest.raises(ValueError, match="differ in length"):
        decoder.decode_into(blocks, [0, 1, 4], [bytearray(8), bytearray(8), bytearray(7)])


def test_a_code_zfec_does_not_support_is_refused():
    with pytest.raises(ValueError, match="k=4, n=3"):
        ErasureDecoder(4, 3)
