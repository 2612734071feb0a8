"""Initial catalog schema: providers, transfers, datasets, versions, content, grants, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

GIB = 1024**3


def upgrade():
    op.create_table(
        "providers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("verify_key_pem", sa.LargeBinary, nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("quota_bytes", sa.BigInteger, nullable=False, server_default=str(50 * GIB)),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_providers"),
        sa.UniqueConstraint("name", name="uq_providers_name"),
        sa.UniqueConstraint("token_hash", name="uq_providers_token_hash"),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("provider_id", sa.Integer, nullable=True),
        sa.Column("title", sa.String(512), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("license", sa.String(256), nullable=False),
        sa.Column("modality", sa.String(128), nullable=False),
        sa.Column("body_part", sa.String(128), nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("edited_fields", sa.JSON, nullable=False),
        sa.Column("search_text", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
        sa.UniqueConstraint("name", name="uq_datasets_name"),
        sa.ForeignKeyConstraint(
            ["provider_id"], ["providers.id"], name="fk_datasets_provider_id_providers"
        ),
    )
    op.create_index("ix_datasets_provider_id", "datasets", ["provider_id"])
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("content_hash", sa.String(128), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("store_location", sa.Text, nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("file_count", sa.Integer, nullable=False),
        sa.Column("series_count", sa.Integer, nullable=False),
        sa.Column("study_count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=True),
        sa.Column("published_by", sa.String(256), nullable=True),
        sa.Column("retired_at", sa.DateTime(), nullable=True),
        sa.Column("retired_by", sa.String(256), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dataset_versions"),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name="fk_dataset_versions_dataset_id_datasets"
        ),
        sa.UniqueConstraint("dataset_id", "version", name="uq_dataset_versions_dataset_id_version"),
        sa.UniqueConstraint(
            "dataset_id", "content_hash", name="uq_dataset_versions_dataset_id_content_hash"
        ),
        sa.CheckConstraint(
            "status IN ('pending-review','published','retired')", name="ck_dataset_versions_status"
        ),
    )
    op.create_index(
        "ix_dataset_versions_dataset_id_status", "dataset_versions", ["dataset_id", "status"]
    )
    op.create_table(
        "version_modalities",
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("version_id", "modality", name="pk_version_modalities"),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["dataset_versions.id"],
            name="fk_version_modalities_version_id_dataset_versions",
        ),
    )
    op.create_index("ix_version_modalities_modality", "version_modalities", ["modality"])
    op.create_table(
        "transfers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("transfer_id", sa.String(128), nullable=False),
        sa.Column("provider_id", sa.Integer, nullable=False),
        sa.Column("dataset_name", sa.String(128), nullable=False),
        sa.Column("k", sa.Integer, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("share_length", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("report_json", sa.Text, nullable=True),
        sa.Column("version_id", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_transfers"),
        sa.UniqueConstraint("transfer_id", name="uq_transfers_transfer_id"),
        sa.ForeignKeyConstraint(
            ["provider_id"], ["providers.id"], name="fk_transfers_provider_id_providers"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name="fk_transfers_version_id_dataset_versions"
        ),
        sa.CheckConstraint(
            "state IN ('receiving','reconstructing','validating','quarantined','cataloged','failed')",
            name="ck_transfers_state",
        ),
        sa.CheckConstraint("k >= 1 AND n >= k AND n <= 255", name="ck_transfers_k_of_n"),
    )
    op.create_index("ix_transfers_provider_id", "transfers", ["provider_id"])
    op.create_index("ix_transfers_version_id", "transfers", ["version_id"])
    op.create_index("ix_transfers_state", "transfers", ["state"])
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("modalities", sa.String(128), nullable=False),
        sa.Column("series_count", sa.Integer, nullable=False),
        sa.Column("file_count", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_studies"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name="fk_studies_version_id_dataset_versions"
        ),
        sa.UniqueConstraint("version_id", "study_uid", name="uq_studies_version_id_study_uid"),
    )
    op.create_table(
        "series",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("study_id", sa.Integer, nullable=True),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("body_part", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer, nullable=True),
        sa.Column("columns", sa.Integer, nullable=True),
        sa.Column("slices", sa.Integer, nullable=True),
        sa.Column("spacing_x", sa.Float, nullable=True),
        sa.Column("spacing_y", sa.Float, nullable=True),
        sa.Column("spacing_z", sa.Float, nullable=True),
        sa.Column("orientation", sa.JSON, nullable=True),
        sa.Column("file_count", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_series"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name="fk_series_version_id_dataset_versions"
        ),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], name="fk_series_study_id_studies"),
        sa.UniqueConstraint("version_id", "series_uid", name="uq_series_version_id_series_uid"),
    )
    op.create_index("ix_series_study_id", "series", ["study_id"])
    op.create_table(
        "files",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("series_id", sa.Integer, nullable=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("study_uid", sa.String(64), nullable=True),
        sa.Column("series_uid", sa.String(64), nullable=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_files"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name="fk_files_version_id_dataset_versions"
        ),
        sa.ForeignKeyConstraint(["series_id"], ["series.id"], name="fk_files_series_id_series"),
        sa.UniqueConstraint("version_id", "path", name="uq_files_version_id_path"),
        sa.CheckConstraint(
            "kind IN ('dicom','table','segmentation','other')", name="ck_files_kind"
        ),
    )
    op.create_index("ix_files_series_id", "files", ["series_id"])
    op.create_table(
        "validation_reports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("error_count", sa.Integer, nullable=False),
        sa.Column("warning_count", sa.Integer, nullable=False),
        sa.Column("info_count", sa.Integer, nullable=False),
        sa.Column("report_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_validation_reports"),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["dataset_versions.id"],
            name="fk_validation_reports_version_id_dataset_versions",
        ),
        sa.UniqueConstraint("version_id", name="uq_validation_reports_version_id"),
    )
    op.create_table(
        "feature_tables",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("row_count", sa.Integer, nullable=True),
        sa.Column("column_count", sa.Integer, nullable=True),
        sa.Column("column_names", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feature_tables"),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["dataset_versions.id"],
            name="fk_feature_tables_version_id_dataset_versions",
        ),
        sa.UniqueConstraint("version_id", "name", name="uq_feature_tables_version_id_name"),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("group_name", sa.String(128), nullable=True),
        sa.Column("user_name", sa.String(128), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("granted_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(256), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_grants"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name="fk_grants_version_id_dataset_versions"
        ),
        sa.CheckConstraint(
            "(group_name IS NULL) <> (user_name IS NULL)", name="ck_grants_group_xor_user"
        ),
    )
    op.create_index("ix_grants_version_id", "grants", ["version_id"])
    op.create_index("ix_grants_group_name", "grants", ["group_name"])
    op.create_index("ix_grants_user_name", "grants", ["user_name"])
    live_group = sa.text("revoked_at IS NULL AND group_name IS NOT NULL")
    live_user = sa.text("revoked_at IS NULL AND user_name IS NOT NULL")
    op.create_index(
        "uq_grants_live_group",
        "grants",
        ["version_id", "group_name"],
        unique=True,
        sqlite_where=live_group,
        postgresql_where=live_group,
    )
    op.create_index(
        "uq_grants_live_user",
        "grants",
        ["version_id", "user_name"],
        unique=True,
        sqlite_where=live_user,
        postgresql_where=live_user,
    )
    op.create_table(
        "principals",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_principals"),
        sa.UniqueConstraint("name", name="uq_principals_name"),
        sa.CheckConstraint(
            "role IN ('admin','researcher','student','provider')", name="ck_principals_role"
        ),
    )
    op.create_table(
        "principal_groups",
        sa.Column("principal_id", sa.Integer, nullable=False),
        sa.Column("group_name", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("principal_id", "group_name", name="pk_principal_groups"),
        sa.ForeignKeyConstraint(
            ["principal_id"], ["principals.id"], name="fk_principal_groups_principal_id_principals"
        ),
    )
    op.create_index("ix_principal_groups_group_name", "principal_groups", ["group_name"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("principal_id", sa.Integer, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.ForeignKeyConstraint(
            ["principal_id"], ["principals.id"], name="fk_api_tokens_principal_id_principals"
        ),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )
    op.create_index("ix_api_tokens_principal_id", "api_tokens", ["principal_id"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])


def downgrade():
    for table in (
        "audit_events",
        "api_tokens",
        "principal_groups",
        "principals",
        "grants",
        "feature_tables",
        "validation_reports",
        "files",
        "series",
        "studies",
        "transfers",
        "version_modalities",
        "dataset_versions",
        "datasets",
        "providers",
    ):
        op.drop_table(table)
