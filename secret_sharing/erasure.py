"""zfec's erasure code for a segment's blocks, computed by ISA-L when it is installed.

The share format's erasure code is zfec's (a systematic Reed-Solomon code over GF(2^8)
with the polynomial 0x11d; docs/share-format.md). zfec's parity was the largest single
cost of a split; Intel's ISA-L multiplies by any GF(2^8) matrix with SIMD, many times faster
(docs/performance.md), and it uses the same field, so it computes the very same parity
when it is given zfec's coefficients. Those are read off zfec itself (the code is linear:
encoding unit blocks of one byte yields each column of the matrix), so nothing here
restates zfec's construction, and the output is byte-for-byte zfec's
(tests/secret_sharing/test_erasure.py compares them).

Decoding (needed when a primary share is missing or bad) is the same multiplication by
another matrix: the k rows of the code's generator matrix (identity rows for primary blocks,
zfec's coefficients for parity blocks) that belong to the blocks at hand, inverted in
GF(2^8), give each missing primary block as a combination of those blocks. ISA-L inverts the
matrix (``gf_invert_matrix``) and multiplies (``ec_encode_data``) straight into the caller's
buffer; the result is zfec's decoding byte for byte (tests/secret_sharing/test_erasure.py).

ISA-L is the Debian package ``libisal2``, loaded with ctypes; without it both directions
fall back to zfec.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
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
        lib.gf_invert_matrix.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        lib.gf_invert_matrix.restype = ctypes.c_int
        return lib
    return None


def isal_available() -> bool:
    """Whether blocks are encoded and decoded by ISA-L (else by zfec)."""
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


class ErasureDecoder:
    """Rebuilds the missing primary blocks of a segment from any k of its n blocks.

    ``decode_into`` writes only the primary blocks that are missing, into buffers the
    caller chose (the reconstruction reads the primary blocks it has straight into their
    places in the segment's ciphertext and lets the decoder fill the gaps, so nothing is
    copied or joined). The decoding matrix of each set of block numbers is computed once
    and kept; an instance may be shared by threads (ISA-L's call releases the GIL, the
    matrices are only read once made).
    """

    def __init__(self, k: int, n: int) -> None:
        if not 1 <= k <= n <= 256:
            raise ValueError(f"k={k}, n={n} is not an erasure code zfec supports")
        self.k = k
        self.n = n
        self._lib = _isal() if n > k else None
        self._zfec = zfec.Decoder(k, n) if self._lib is None else None
        self._coefficients = zfec_coefficients(k, n) if self._lib is not None else b""
        self._tables: dict[tuple[int, ...], Any] = {}
        self._lock = threading.Lock()

    @property
    def engine(self) -> str:
        return "isa-l" if self._lib is not None else "zfec"

    def _decode_tables(self, numbers: tuple[int, ...]) -> Any:
        """ISA-L's tables for the rows of the inverted submatrix that give the missing
        primary blocks from the blocks ``numbers`` (in that order)."""
        tables = self._tables.get(numbers)
        if tables is not None:
            return tables
        assert self._lib is not None
        k = self.k
        submatrix = bytearray(k * k)
        for row, number in enumerate(numbers):
            if number < k:
                submatrix[row * k + number] = 1
            else:
                start = (number - k) * k
                submatrix[row * k : (row + 1) * k] = self._coefficients[start : start + k]
        inverse = bytearray(k * k)
        if self._lib.gf_invert_matrix(_address(submatrix)[0], _address(inverse)[0], k) != 0:
            raise ValueError(f"blocks {list(numbers)} do not determine the segment (singular)")
        missing = [j for j in range(k) if j not in numbers]
        rows = bytearray(b"".join(inverse[j * k : (j + 1) * k] for j in missing))
        tables = ctypes.create_string_buffer(32 * k * len(missing))
        self._lib.ec_init_tables(k, len(missing), _address(rows)[0], ctypes.addressof(tables))
        with self._lock:
            self._tables[numbers] = tables
        return tables

    def decode_into(self, blocks: list[Any], numbers: list[int], primaries: list[Any]) -> None:
        """Fill ``primaries[j]`` for every primary block j (``0 <= j < k``) not among
        ``numbers``, where ``blocks[i]`` holds block ``numbers[i]`` (k distinct numbers
        below n, all blocks of one length). The other entries of ``primaries`` are not
        touched: they are the caller's copies of the primary blocks given."""
        k, n = self.k, self.n
        if len(blocks) != k or len(numbers) != k or len(primaries) != k:
            raise ValueError(
                f"{len(blocks)} blocks, {len(numbers)} block numbers and {len(primaries)} "
                f"primary buffers given, {k} of each expected"
            )
        if len(set(numbers)) != k or not all(0 <= number < n for number in numbers):
            raise ValueError(f"block numbers {numbers} are not {k} distinct numbers below {n}")
        missing = [j for j in range(k) if j not in numbers]
        if not missing:
            return
        length = memoryview(blocks[0]).nbytes
        targets = [primaries[j] for j in missing]
        if any(memoryview(block).nbytes != length for block in [*blocks, *targets]):
            raise ValueError("blocks and primary buffers differ in length")
        if length == 0:
            return
        if self._zfec is not None:
            # zfec wants lists it may reorder, and returns all k primary blocks.
            decoded = self._zfec.decode(list(blocks), list(numbers))
            for j, target in zip(missing, targets, strict=True):
                memoryview(target)[:] = decoded[j]
            return
        assert self._lib is not None
        tables = self._decode_tables(tuple(numbers))
        sources = [_address(block) for block in blocks]
        outputs = [_address(target, writable=True) for target in targets]
        self._lib.ec_encode_data(
            length,
            k,
            len(missing),
            ctypes.addressof(tables),
            (ctypes.c_void_p * k)(*(address for address, _ in sources)),
            (ctypes.c_void_p * len(missing))(*(address for address, _ in outputs)),
        )
        del sources, outputs  # the pins, held until ISA-L returned
