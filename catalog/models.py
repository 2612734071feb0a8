"""The catalog's tables as SQLAlchemy 2.0 typed models.

The schema itself only ever changes through the Alembic migrations in
``catalog/migrations``; these classes describe it for queries and must be kept in
step with the newest migration (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, synonym
from sqlalchemy.types import TypeDecorator

GIB = 1024**3
DEFAULT_PROVIDER_QUOTA_BYTES = 50 * GIB

VERSION_STATES = ("pending-review", "published", "retired")
TRANSFER_STATES = (
    "receiving",
    "reconstructing",
    "validating",
    "quarantined",
    "cataloged",
    "failed",
)
FILE_KINDS = ("dicom", "table", "segmentation", "other")
ROLES = ("admin", "researcher", "student", "provider")


class AccessMode(StrEnum):
    """How a granted version may be used, which is also the kind of session that shows it.

    ``desktop``: pixels only. The version is mounted only into desktop sessions, whose browser
    receives the desktop's image and nothing else; the default for data from providers.
    ``notebook``: JupyterLab in the browser may show the data (cell outputs, the file
    browser), so an admin marks only course material and open data so. Such a version is
    mounted into both kinds of session.
    """

    DESKTOP = "desktop"
    NOTEBOOK = "notebook"

    def allows(self, session: AccessMode) -> bool:
        """Whether a version granted in this mode may be mounted into ``session``."""
        return self is AccessMode.NOTEBOOK or session is AccessMode.DESKTOP


ACCESS_MODES = tuple(mode.value for mode in AccessMode)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timestamps stored as naive UTC on every backend, returned timezone-aware.

    SQLite has no time zones and PostgreSQL's ``timestamptz`` depends on the session
    zone; storing naive UTC everywhere keeps comparisons (grant expiry) identical.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("catalog timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Provider(Base):
    """A data provider (hospital, certified business) that sends secret-shared datasets."""

    __tablename__ = "providers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    verify_key_pem: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    quota_bytes: Mapped[int] = mapped_column(
        BigInteger,
        default=DEFAULT_PROVIDER_QUOTA_BYTES,
        server_default=str(DEFAULT_PROVIDER_QUOTA_BYTES),
    )
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: PS3.16 codes of the de-identification options (PS3.15 E.3) this provider may declare;
    #: ingestion applies a file's declared options only where they are listed here.
    deid_options: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")

    provider_quota_bytes = synonym("quota_bytes")

    def __repr__(self) -> str:
        return f"Provider(name={self.name!r}, fingerprint={self.fingerprint!r})"


class Transfer(Base):
    """One secret-shared upload of a dataset, from the first share to its catalog entry."""

    __tablename__ = "transfers"
    __table_args__ = (
        CheckConstraint(
            "state IN ('receiving','reconstructing','validating','quarantined','cataloged','failed')",
            name="state",
        ),
        CheckConstraint("k >= 1 AND n >= k AND n <= 255", name="k_of_n"),
        Index("ix_transfers_state", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    transfer_id: Mapped[str] = mapped_column(String(128), unique=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("providers.id"), index=True)
    dataset_name: Mapped[str] = mapped_column(String(128))
    k: Mapped[int]
    n: Mapped[int]
    share_length: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    report_json: Mapped[str | None] = mapped_column(Text)
    # The version this transfer became (or duplicated, for a repeated content hash).
    version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    provider: Mapped[Provider] = relationship(lazy="joined")
    version: Mapped[DatasetVersion | None] = relationship(lazy="joined")

    def __repr__(self) -> str:
        return f"Transfer({self.transfer_id!r}, state={self.state!r})"


class Dataset(Base):
    """A named dataset; its content lives in immutable versions."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    provider_id: Mapped[int | None] = mapped_column(ForeignKey("providers.id"), index=True)
    title: Mapped[str] = mapped_column(String(512), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    license: Mapped[str] = mapped_column(String(256), default="")
    modality: Mapped[str] = mapped_column(String(128), default="")
    body_part: Mapped[str] = mapped_column(String(128), default="")
    tags: Mapped[list[Any]] = mapped_column(default=list)
    labels: Mapped[list[Any]] = mapped_column(default=list)
    # Fields a curator changed by hand: a new version's manifest no longer overwrites them.
    edited_fields: Mapped[list[Any]] = mapped_column(default=list)
    # Lower-cased name, title, description, tags, labels, body part and modalities, for search
    # (LIKE on SQLite, a trigram index on PostgreSQL).
    search_text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    provider: Mapped[Provider | None] = relationship(lazy="joined")
    # Loaded explicitly (visibility decides which versions a caller gets), never implicitly.
    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset", order_by="DatasetVersion.version", lazy="select"
    )


class DatasetVersion(Base):
    """One immutable, content-addressed version of a dataset."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        UniqueConstraint("dataset_id", "content_hash"),
        CheckConstraint("status IN ('pending-review','published','retired')", name="status"),
        Index("ix_dataset_versions_dataset_id_status", "dataset_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    version: Mapped[int]
    status: Mapped[str] = mapped_column(String(32), default="pending-review")
    content_hash: Mapped[str] = mapped_column(String(128))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    store_location: Mapped[str] = mapped_column(Text)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    file_count: Mapped[int] = mapped_column(default=0)
    series_count: Mapped[int] = mapped_column(default=0)
    study_count: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(256), default="")
    published_at: Mapped[datetime | None]
    published_by: Mapped[str | None] = mapped_column(String(256))
    retired_at: Mapped[datetime | None]
    retired_by: Mapped[str | None] = mapped_column(String(256))

    dataset: Mapped[Dataset] = relationship(back_populates="versions", lazy="joined")
    modalities: Mapped[list[VersionModality]] = relationship(
        lazy="selectin", order_by="VersionModality.modality"
    )
    report: Mapped[ValidationReportRow | None] = relationship(lazy="selectin")

    @property
    def modality_list(self) -> list[str]:
        return [m.modality for m in self.modalities]

    def __repr__(self) -> str:
        return f"DatasetVersion({self.dataset_id}, v{self.version}, {self.status})"


class VersionModality(Base):
    """Which modalities a version holds, kept apart so search never scans files."""

    __tablename__ = "version_modalities"

    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), primary_key=True)
    modality: Mapped[str] = mapped_column(String(16), primary_key=True, index=True)


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (UniqueConstraint("version_id", "study_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    study_uid: Mapped[str] = mapped_column(String(64))
    modalities: Mapped[str] = mapped_column(String(128), default="")
    series_count: Mapped[int] = mapped_column(default=0)
    file_count: Mapped[int] = mapped_column(default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("version_id", "series_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    rows: Mapped[int | None]
    columns: Mapped[int | None]
    slices: Mapped[int | None]
    spacing_x: Mapped[float | None] = mapped_column(Float)
    spacing_y: Mapped[float | None] = mapped_column(Float)
    spacing_z: Mapped[float | None] = mapped_column(Float)
    orientation: Mapped[list[Any] | None]
    file_count: Mapped[int] = mapped_column(default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class File(Base):
    __tablename__ = "files"
    __table_args__ = (
        UniqueConstraint("version_id", "path"),
        CheckConstraint("kind IN ('dicom','table','segmentation','other')", name="kind"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    modality: Mapped[str | None] = mapped_column(String(16))
    study_uid: Mapped[str | None] = mapped_column(String(64))
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))


class ValidationReportRow(Base):
    """The validation report a version was accepted with (JSON from ingestion/report.py)."""

    __tablename__ = "validation_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), unique=True)
    passed: Mapped[bool]
    error_count: Mapped[int] = mapped_column(default=0)
    warning_count: Mapped[int] = mapped_column(default=0)
    info_count: Mapped[int] = mapped_column(default=0)
    report_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeatureTable(Base):
    """A derived table (radiomics features, tabular summaries) shipped with a version."""

    __tablename__ = "feature_tables"
    __table_args__ = (UniqueConstraint("version_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    name: Mapped[str] = mapped_column(String(256))
    path: Mapped[str] = mapped_column(Text)
    row_count: Mapped[int | None]
    column_count: Mapped[int | None]
    column_names: Mapped[list[Any]] = mapped_column(default=list)


class Grant(Base):
    """Access for a group or a user to one dataset version, optionally until a time."""

    __tablename__ = "grants"
    __table_args__ = (
        CheckConstraint("(group_name IS NULL) <> (user_name IS NULL)", name="group_xor_user"),
        CheckConstraint("mode IN ('desktop','notebook')", name="mode"),
        Index("ix_grants_group_name", "group_name"),
        Index("ix_grants_user_name", "user_name"),
        # At most one live grant per subject and version; revoked ones stay as history.
        Index(
            "uq_grants_live_group",
            "version_id",
            "group_name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL AND group_name IS NOT NULL"),
            postgresql_where=text("revoked_at IS NULL AND group_name IS NOT NULL"),
        ),
        Index(
            "uq_grants_live_user",
            "version_id",
            "user_name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL AND user_name IS NOT NULL"),
            postgresql_where=text("revoked_at IS NULL AND user_name IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    group_name: Mapped[str | None] = mapped_column(String(128))
    user_name: Mapped[str | None] = mapped_column(String(128))
    # AccessMode: which sessions may mount the version (desktop only, or notebooks too).
    mode: Mapped[str] = mapped_column(
        String(16), default=AccessMode.DESKTOP.value, server_default=AccessMode.DESKTOP.value
    )
    expires_at: Mapped[datetime | None]
    granted_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(256))

    version: Mapped[DatasetVersion] = relationship(lazy="joined")


class Principal(Base):
    """A person or service that calls the catalog API, with one role."""

    __tablename__ = "principals"
    __table_args__ = (
        CheckConstraint("role IN ('admin','researcher','student','provider')", name="role"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    groups: Mapped[list[PrincipalGroup]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="PrincipalGroup.group_name"
    )


class PrincipalGroup(Base):
    __tablename__ = "principal_groups"

    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), primary_key=True)
    group_name: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class ApiToken(Base):
    """A bearer token, stored only as its SHA-256."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    principal: Mapped[Principal] = relationship(lazy="joined")


class AuditEvent(Base):
    """Append-only record of every state change; the database refuses UPDATE and DELETE."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(512))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AuditCheckpoint(Base):
    """A signed Merkle tree head over the audit log's first ``tree_size`` entries.

    ``leaf_hashes`` holds the leaves this checkpoint added (entries ``previous tree_size``
    up to ``tree_size``, 32 bytes each) and ``frontier`` the tree's compact range after them,
    so the next checkpoint continues from it. Append-only in the database, like the log.
    """

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    tree_size: Mapped[int] = mapped_column(BigInteger, unique=True)
    # The id of the entry at leaf tree_size - 1: entries with a larger id are not yet covered.
    last_entry_id: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hashes: Mapped[bytes] = mapped_column(LargeBinary)
    frontier: Mapped[bytes] = mapped_column(LargeBinary)
