import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secret_sharing.shamir import combine_secret, gf_inv, gf_mul, split_secret


def test_field_is_the_aes_field():
    # FIPS-197 section 4.2: {57} x {83} = {c1}
    assert gf_mul(0x57, 0x83) == 0xC1
    assert all(gf_mul(a, gf_inv(a)) == 1 for a in range(1, 256))


@pytest.mark.parametrize("k,n", [(2, 2), (2, 3), (3, 5), (4, 6)])
def test_every_k_subset_recovers_the_key(k, n):
    key = os.urandom(32)
    shares = split_secret(key, k, n)
    assert [x for x, _ in shares] == list(range(1, n + 1))
    for size in range(k, n + 1):
        for subset in itertools.combinations(shares, size):
            assert combine_secret(subset) == key


def test_fewer_than_k_shares_give_a_different_value():
    key = os.urandom(32)
    shares = split_secret(key, 3, 5)
    assert combine_secret(shares[:2]) != key


def test_polynomial_matches_a_hand_computation():
    # k=2: y = secret xor (coef * x); with coef = 1, y = secret ^ x per byte.
    shares = split_secret(b"\x10\x20", 2, 3, randbytes=lambda n: b"\x01" * n)
    assert shares == [(1, b"\x11\x21"), (2, b"\x12\x22"), (3, b"\x13\x23")]


def test_large_n_is_fast_enough():
    key = os.urandom(32)
    shares = split_secret(key, 255, 255)
    assert combine_secret(shares) == key


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        split_secret(b"k", 1, 3)
    with pytest.raises(ValueError):
        split_secret(b"k", 3, 256)
    with pytest.raises(ValueError):
        combine_secret([(1, b"a"), (1, b"b")])
    with pytest.raises(ValueError):
        combine_secret([(1, b"a"), (2, b"bc")])


@settings(max_examples=50, deadline=None)
@given(secret=st.binary(min_size=1, max_size=64), k=st.integers(2, 8), extra=st.integers(0, 4))
def test_round_trip_property(secret, k, extra):
    n = k + extra
    shares = split_secret(secret, k, n)
    assert combine_secret(shares[-k:]) == secret
