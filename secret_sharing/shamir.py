"""Byte-wise Shamir secret sharing over GF(2^8) with the AES polynomial 0x11B.

Used for the 32-byte data key only (the data itself is erasure-coded ciphertext).
Each byte of the secret is the constant term of its own random polynomial of
degree k-1; share j is the evaluation of every polynomial at x = j (1..255).
Multiplication by a fixed field element is a 256-byte lookup table, applied to all
bytes at once with ``bytes.translate``, so splitting for n = 255 stays fast without
numpy (the provider install does not have it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache

POLYNOMIAL = 0x11B
GENERATOR = 0x03

_EXP = [0] * 510
_LOG = [0] * 256


def _build_tables() -> None:
    value = 1
    for power in range(255):
        _EXP[power] = value
        _LOG[value] = power
        # multiply by the generator 3 = x + 1: value*2 xor value, reduced by 0x11B
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= POLYNOMIAL
        value = doubled ^ value
    for power in range(255, 510):
        _EXP[power] = _EXP[power - 255]


_build_tables()


def gf_mul(a: int, b: int) -> int:
    """Product of two field elements."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_inv(a: int) -> int:
    """Multiplicative inverse of a non-zero field element."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(256)")
    return _EXP[255 - _LOG[a]]


@lru_cache(maxsize=512)
def _mul_table(scalar: int) -> bytes:
    return bytes(gf_mul(scalar, value) for value in range(256))


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def split_secret(
    secret: bytes, k: int, n: int, *, randbytes: Callable[[int], bytes] = os.urandom
) -> list[tuple[int, bytes]]:
    """Split ``secret`` into n shares (x, y) with x = 1..n; any k recover it."""
    if not 2 <= k <= n <= 255:
        raise ValueError(f"need 2 <= k <= n <= 255, got k={k}, n={n}")
    if not secret:
        raise ValueError("secret is empty")
    # coefficients[0] is the secret; the others are uniformly random bytes.
    coefficients = [bytes(secret)] + [randbytes(len(secret)) for _ in range(k - 1)]
    shares = []
    for x in range(1, n + 1):
        table = _mul_table(x)
        accumulator = coefficients[-1]
        for coefficient in reversed(coefficients[:-1]):  # Horner's rule
            accumulator = _xor(accumulator.translate(table), coefficient)
        shares.append((x, accumulator))
    return shares


def combine_secret(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """Lagrange-interpolate the shares at x = 0.

    Any set of points yields *some* secret: callers must check the result against
    a commitment (the transfer's key commitment does that).
    """
    if not shares:
        raise ValueError("no shares to combine")
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs):
        raise ValueError(f"duplicate share x-coordinates: {sorted(xs)}")
    if any(not 1 <= x <= 255 for x in xs):
        raise ValueError(f"share x-coordinates must be 1..255: {sorted(xs)}")
    length = len(shares[0][1])
    if any(len(y) != length for _, y in shares):
        raise ValueError("shares have different lengths")
    secret = bytes(length)
    for j, (xj, yj) in enumerate(shares):
        # basis polynomial l_j(0) = prod_{m != j} x_m / (x_m - x_j); subtraction is xor
        basis = 1
        for m, xm in enumerate(xs):
            if m != j:
                basis = gf_mul(basis, gf_mul(xm, gf_inv(xm ^ xj)))
        secret = _xor(secret, bytes(yj).translate(_mul_table(basis)))
    return secret
