"""The parity blocks of a segment: zfec's code, computed by ISA-L when it is installed.

The share format's erasure code is zfec's (a systematic Reed-Solomon code over GF(2^8)
with the polynomial 0x11d; docs/share-format.md). zfec's parity was the largest single
cost of a split; Intel's ISA-L multiplies by any GF(2^8) matrix with SIMD, many times faster
(docs/performance.md), and it uses the same field, so it computes the very same parity
when it is given zfec's coefficients. Those are read off zfec itself (the code is linear:
encoding unit blocks of one byte yields each column of the matrix), so nothing here
restates zfec's construction, and the output is byte-for-byte zfec's
(tests/secret_sharing/test_erasure.py compares them).

ISA-L is the Debian package ``libisal2``, loaded with ctypes; without it this falls back
to zfec. Decoding (only needed when a primary share is missing or bad) stays with zfec.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

import zfec

#: Set to ``0`` to compute parity with zfec even where ISA-L is installed.
USE_ISAL_ENV = "ENCLAVE_ISAL"


@functools.lru_cache(maxsize=1)
def _isal() -> ctypes.CDLL | None:
    if os.environ.get(USE_ISAL_ENV, "1") == "0":
        return None
    for name in ("libisal.so.2", ctypes.util.find_library("isal")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.ec_init_tables.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        lib.ec_init_tables.restype = None
        lib.ec_encode_data.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.ec_encode_data.restype = None
        return lib
    return None


def isal_available() -> bool:
    """Whether parity is computed by ISA-L (else by zfec)."""
    return _isal() is not None


def zfec_coefficients(k: int, n: int) -> bytes:
    """zfec's parity matrix for k-of-n, row-major: row i gives parity block k+i as
    sum over j of coefficient[i][j] * primary block j in GF(2^8)."""
    encoder = zfec.Encoder(k, n)
    parity_rows = n - k
    matrix = bytearray(parity_rows * k)
    for j in range(k):
        unit = [b"\x01" if column == j else b"\x00" for column in range(k)]
        for i, parity in enumerate(encoder.encode(unit, list(range(k, n)))):
            matrix[i * k + j] = parity[0]
    return bytes(matrix)


def _address(buffer: Any, *, writable: bool = False) -> tuple[int, Any]:
    """The address of a buffer and the ctypes object that keeps it pinned while the
    address is in use. ctypes takes addresses only of writable buffers, so read-only
    input (bytes) is copied; an output must be writable."""
    view = memoryview(buffer)
    if view.readonly:
        if writable:
            raise ValueError("parity buffers must be writable")
        view = memoryview(bytearray(view))
    if not view.c_contiguous:
        raise ValueError("blocks must be contiguous buffers")
    pin = (ctypes.c_char * view.nbytes).from_buffer(view)
    return ctypes.addressof(pin), pin


class ParityEncoder:
    """Computes the n - k parity blocks of a segment from its k primary blocks.

    One instance per thread is cheapest (zfec's encoder is not shared across threads);
    ISA-L's call releases the GIL like zfec's does.
    """

    def __init__(self, k: int, n: int) -> None:
        self.k = k
        self.n = n
        self._lib = _isal() if n > k else None
        self._zfec = zfec.Encoder(k, n) if self._lib is None else None
        if self._lib is not None:
            coefficients = bytearray(zfec_coefficients(k, n))
            self._tables = ctypes.create_string_buffer(32 * k * (n - k))
            self._lib.ec_init_tables(
                k, n - k, _address(coefficients)[0], ctypes.addressof(self._tables)
            )

    @property
    def engine(self) -> str:
        return "isa-l" if self._lib is not None else "zfec"

    def encode(self, primaries: list[Any]) -> list[Any]:
        """The parity blocks for ``primaries`` (k equal-length buffers), newly allocated."""
        length = memoryview(primaries[0]).nbytes if primaries else 0
        parity = memoryview(bytearray(length * (self.n - self.k)))
        blocks = [parity[i * length : (i + 1) * length] for i in range(self.n - self.k)]
        self.encode_into(primaries, blocks)
        return blocks

    def encode_into(self, primaries: list[Any], parity: list[Any]) -> None:
        """Write the n - k parity blocks of ``primaries`` into the writable buffers
        ``parity``; all blocks have one length. The splitter keeps one buffer per thread
        for a whole segment, so no memory is allocated (or page-faulted) per segment."""
        k, n = self.k, self.n
        if len(primaries) != k:
            raise ValueError(f"{len(primaries)} primary blocks given, {k} expected")
        if len(parity) != n - k:
            raise ValueError(f"{len(parity)} parity buffers given, {n - k} expected")
        if n == k:
            return
        length = memoryview(primaries[0]).nbytes
        if any(memoryview(block).nbytes != length for block in [*primaries, *parity]):
            raise ValueError("primary and parity blocks differ in length")
        if length == 0:
            return
        if self._zfec is not None:
            computed = self._zfec.encode(list(primaries), list(range(k, n)))
            for target, block in zip(parity, computed, strict=True):
                memoryview(target)[:] = block
            return
        # __init__ sets exactly one engine: ISA-L's library, or else zfec's encoder.
        assert self._lib is not None
        sources = [_address(block) for block in primaries]
        targets = [_address(block, writable=True) for block in parity]
        self._lib.ec_encode_data(
            length,
            k,
            n - k,
            ctypes.addressof(self._tables),
            (ctypes.c_void_p * k)(*(address for address, _ in sources)),
            (ctypes.c_void_p * (n - k))(*(address for address, _ in targets)),
        )
        del sources, targets  # the pins, held until ISA-L returned
