"""Errors raised while splitting, checking or combining secret-shared transfers.

Every message names the share file (or dataset path) at fault, so that a data
manager can tell which of the n uploads to resend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from enclave.errors import EnclaveError


class ShareError(EnclaveError):
    """Base class for every secret-sharing failure a user can act on."""


class ShareParameterError(ShareError):
    """k, n or the segment size is outside what the format allows."""


class KeyFileError(ShareError):
    """A signing or verify key file is missing, unreadable or not the right kind of key."""


class DatasetError(ShareError):
    """The dataset to split cannot be packed (symlink, device, changed while reading)."""


class OutputExistsError(ShareError):
    """Refusing to overwrite a share file or a dataset that is already there."""


class ShareFormatError(ShareError):
    """A share file is structurally invalid: bad magic, truncated, inconsistent layout."""


class ShareIntegrityError(ShareError):
    """A share's bytes do not match what the signed manifest says (corruption or tampering)."""


class ShareSignatureError(ShareIntegrityError):
    """A share's manifest is not signed by the expected provider key."""


class NotEnoughSharesError(ShareError):
    """Fewer than k good shares remain; lists what was wrong with each rejected one."""

    def __init__(self, message: str, rejected: Mapping[Path, str] | None = None) -> None:
        self.rejected: dict[Path, str] = dict(rejected or {})
        if self.rejected:
            details = "; ".join(f"{path}: {why}" for path, why in self.rejected.items())
            message = f"{message} ({details})"
        super().__init__(message)
