"""The dataset catalog: datasets, immutable versions, grants and an append-only audit.

Other services use this package through ``open_catalog`` and the ``Catalog`` methods;
the schema changes only through the Alembic migrations shipped in ``catalog/migrations``.
"""

from catalog import airlock as airlock  # registers the airlock's tables with the models
from catalog.auth import Principal, PrincipalResolver
from catalog.db import DB_URL_ENV, default_database_url, resolve_database_url
from catalog.errors import (
    CatalogError,
    Conflict,
    InvalidInput,
    NotFound,
    UnknownDataset,
    UnknownProvider,
    UnknownTransfer,
    UnknownVersion,
)
from catalog.models import (
    DEFAULT_PROVIDER_QUOTA_BYTES,
    TRANSFER_STATES,
    VERSION_STATES,
    DatasetVersion,
    Provider,
    Transfer,
)
from catalog.service import Catalog, open_catalog, parse_expiry, parse_version
from catalog.views import (
    AuditView,
    DatasetSummary,
    GrantView,
    MountableVersion,
    TransferView,
    VersionDetail,
    VersionSummary,
)

__all__ = [
    "DB_URL_ENV",
    "DEFAULT_PROVIDER_QUOTA_BYTES",
    "TRANSFER_STATES",
    "VERSION_STATES",
    "AuditView",
    "Catalog",
    "CatalogError",
    "Conflict",
    "DatasetSummary",
    "DatasetVersion",
    "GrantView",
    "InvalidInput",
    "MountableVersion",
    "NotFound",
    "Principal",
    "PrincipalResolver",
    "Provider",
    "Transfer",
    "TransferView",
    "UnknownDataset",
    "UnknownProvider",
    "UnknownTransfer",
    "UnknownVersion",
    "VersionDetail",
    "VersionSummary",
    "default_database_url",
    "open_catalog",
    "parse_expiry",
    "parse_version",
    "resolve_database_url",
]
