"""Secret-shared transfer of datasets: encrypt, erasure-code k-of-n, Shamir-split the key,
sign the manifest (Krawczyk's "secret sharing made short", as Tahoe-LAFS does it).

The byte format is specified in docs/share-format.md. The names below load their module on
first use: this package is also the distribution's lowest layer (``secret_sharing.errors``,
``.allocator``, ``.fileio``), which every other package imports without paying for the codec.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secret_sharing.combine import (
        CombineResult,
        ShareInfo,
        combine_shares,
        read_share_info,
        verify_share,
    )
    from secret_sharing.errors import (
        DatasetError,
        KeyFileError,
        NotEnoughSharesError,
        OutputExistsError,
        ShareError,
        ShareFormatError,
        ShareIntegrityError,
        ShareParameterError,
        ShareSignatureError,
    )
    from secret_sharing.format import DEFAULT_SEGMENT_SIZE, FORMAT_VERSION, Manifest
    from secret_sharing.keys import (
        generate_signing_key,
        key_fingerprint,
        load_signing_key,
        load_verify_key,
        write_keypair,
    )
    from secret_sharing.packing import DatasetSummary, measure_dataset
    from secret_sharing.split import SplitResult, split_dataset
    from secret_sharing.verify import BlockDigester, verify_share_digests

_EXPORTS = {
    "BlockDigester": "secret_sharing.verify",
    "CombineResult": "secret_sharing.combine",
    "DEFAULT_SEGMENT_SIZE": "secret_sharing.format",
    "DatasetError": "secret_sharing.errors",
    "DatasetSummary": "secret_sharing.packing",
    "FORMAT_VERSION": "secret_sharing.format",
    "KeyFileError": "secret_sharing.errors",
    "Manifest": "secret_sharing.format",
    "NotEnoughSharesError": "secret_sharing.errors",
    "OutputExistsError": "secret_sharing.errors",
    "ShareError": "secret_sharing.errors",
    "ShareFormatError": "secret_sharing.errors",
    "ShareInfo": "secret_sharing.combine",
    "ShareIntegrityError": "secret_sharing.errors",
    "ShareParameterError": "secret_sharing.errors",
    "ShareSignatureError": "secret_sharing.errors",
    "SplitResult": "secret_sharing.split",
    "combine_shares": "secret_sharing.combine",
    "generate_signing_key": "secret_sharing.keys",
    "key_fingerprint": "secret_sharing.keys",
    "load_signing_key": "secret_sharing.keys",
    "load_verify_key": "secret_sharing.keys",
    "measure_dataset": "secret_sharing.packing",
    "read_share_info": "secret_sharing.combine",
    "split_dataset": "secret_sharing.split",
    "verify_share": "secret_sharing.combine",
    "verify_share_digests": "secret_sharing.verify",
    "write_keypair": "secret_sharing.keys",
}

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "FORMAT_VERSION",
    "BlockDigester",
    "CombineResult",
    "DatasetError",
    "DatasetSummary",
    "KeyFileError",
    "Manifest",
    "NotEnoughSharesError",
    "OutputExistsError",
    "ShareError",
    "ShareFormatError",
    "ShareInfo",
    "ShareIntegrityError",
    "ShareParameterError",
    "ShareSignatureError",
    "SplitResult",
    "combine_shares",
    "generate_signing_key",
    "key_fingerprint",
    "load_signing_key",
    "load_verify_key",
    "measure_dataset",
    "read_share_info",
    "split_dataset",
    "verify_share",
    "verify_share_digests",
    "write_keypair",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'secret_sharing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
