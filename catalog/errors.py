"""Catalog errors: each names the dataset, version, transfer or principal at fault."""

from __future__ import annotations

from secret_sharing.errors import EnclaveError


class CatalogError(EnclaveError):
    """A catalog request that cannot be honoured as asked."""


class NotFound(CatalogError):
    """Something named does not exist (or is not visible to the caller)."""


class UnknownDataset(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown dataset {name!r}")


class UnknownVersion(NotFound):
    def __init__(self, name: str, version: object) -> None:
        super().__init__(f"dataset {name!r} has no version {version}")


class UnknownTransfer(NotFound):
    def __init__(self, transfer_id: str) -> None:
        super().__init__(f"unknown transfer {transfer_id!r}")


class UnknownProvider(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown provider {name!r}")


class Conflict(CatalogError):
    """The request contradicts the catalog's current state (a duplicate, a wrong transition)."""


class InvalidInput(CatalogError):
    """A value that can never be right (bad date, bad role, bad name)."""
