"""Secret-shared transfer of datasets: encrypt, erasure-code k-of-n, Shamir-split the key,
sign the manifest (Krawczyk's "secret sharing made short", as Tahoe-LAFS does it).

The byte format is specified in docs/share-format.md.
"""

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
