"""The airlock: export requests, their files and votes, and the content index its checks use.

``content_chunks`` holds the BLAKE3 digest (16 bytes) of every informative 64 KiB-aligned chunk
of every cataloged file, ``version_identifiers`` a salted digest of every subject identifier of
a version (``ingestion/content_index.py``), both filled in as a version is cataloged. Versions
cataloged before this revision have no entries: the airlock still finds whole copies of their
files (by SHA-256, in ``files``), not pieces of them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STATES = "'draft','submitted','in-review','approved','returned','rejected','released','withdrawn'"


def upgrade():
    op.create_table(
        "export_requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("requester", sa.String(128), nullable=False),
        sa.Column("justification", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("paths", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("released_at", sa.DateTime(), nullable=True),
        sa.Column("manifest_sha256", sa.String(64), nullable=True),
        sa.Column("downloads", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_export_requests"),
        sa.CheckConstraint(f"state IN ({STATES})", name="ck_export_requests_state"),
    )
    op.create_index("ix_export_requests_requester", "export_requests", ["requester"])
    op.create_index("ix_export_requests_state", "export_requests", ["state"])
    op.create_table(
        "export_files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.Integer, nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("checks", sa.JSON, nullable=False),
        sa.Column("lineage", sa.JSON, nullable=True),
        sa.Column("released", sa.Boolean, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_export_files"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["export_requests.id"],
            name="fk_export_files_request_id_export_requests",
        ),
        sa.UniqueConstraint(
            "request_id", "round", "name", name="uq_export_files_request_id_round_name"
        ),
        sa.CheckConstraint("verdict IN ('pass','hold','refuse')", name="ck_export_files_verdict"),
    )
    op.create_index("ix_export_files_request_id", "export_files", ["request_id"])
    op.create_table(
        "export_votes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.Integer, nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("excluded", sa.JSON, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_export_votes"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["export_requests.id"],
            name="fk_export_votes_request_id_export_requests",
        ),
        sa.UniqueConstraint(
            "request_id", "round", "reviewer", name="uq_export_votes_request_id_round_reviewer"
        ),
        sa.CheckConstraint(
            "decision IN ('approve','return','reject')", name="ck_export_votes_decision"
        ),
    )
    op.create_index("ix_export_votes_request_id", "export_votes", ["request_id"])
    op.create_table(
        "content_chunks",
        sa.Column("file_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
        sa.Column("digest", sa.LargeBinary(16), nullable=False),
        sa.PrimaryKeyConstraint("file_id", "digest", name="pk_content_chunks"),
        sa.ForeignKeyConstraint(["file_id"], ["files.id"], name="fk_content_chunks_file_id_files"),
    )
    op.create_index("ix_content_chunks_digest", "content_chunks", ["digest"])
    op.create_table(
        "version_identifiers",
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("digest", sa.LargeBinary(16), nullable=False),
        sa.PrimaryKeyConstraint("version_id", "digest", name="pk_version_identifiers"),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["dataset_versions.id"],
            name="fk_version_identifiers_version_id_dataset_versions",
        ),
    )
    op.create_index("ix_version_identifiers_digest", "version_identifiers", ["digest"])


def downgrade():
    op.drop_index("ix_version_identifiers_digest", table_name="version_identifiers")
    op.drop_table("version_identifiers")
    op.drop_index("ix_content_chunks_digest", table_name="content_chunks")
    op.drop_table("content_chunks")
    op.drop_index("ix_export_votes_request_id", table_name="export_votes")
    op.drop_table("export_votes")
    op.drop_index("ix_export_files_request_id", table_name="export_files")
    op.drop_table("export_files")
    op.drop_index("ix_export_requests_state", table_name="export_requests")
    op.drop_index("ix_export_requests_requester", table_name="export_requests")
    op.drop_table("export_requests")
