"""The root of user-facing errors, and those raised while splitting, checking or combining secret-shared transfers.

Every message names the share file (or dataset path) at fault, so that a data
manager can tell which of the n uploads to resend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class EnclaveError(Exception):
    """A failure caused by input or state that a user can act on.

    The root of every such error in the distribution (this package is its lowest layer; the
    ``enclave`` application re-exports it as ``enclave.errors.EnclaveError``). The CLI
    prints ``error: <message>`` and exits non-zero instead of a traceback, so messages must
    name the offending thing (a file, a share, a dataset) and say what is wrong with it.
    """

    exit_code = 1


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
