"""Signed Merkle checkpoints over the audit log, append-only like the log itself.

``audit_checkpoints`` holds signed tree heads (``catalog/audit.py``); triggers refuse UPDATE
and DELETE on it (and TRUNCATE on PostgreSQL) as 0002 does for ``audit_events``. On
PostgreSQL, PUBLIC loses UPDATE, DELETE and TRUNCATE on both tables, so only their owner
(who can also drop the triggers) may change them: the application should connect as a role
set up by ``catalog.audit.restrict_application_role``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

MESSAGE = "audit_checkpoints is append-only"


def upgrade():
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tree_size", sa.BigInteger, nullable=False),
        sa.Column("last_entry_id", sa.BigInteger, nullable=False),
        sa.Column("root_hash", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("key_fingerprint", sa.String(64), nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hashes", sa.LargeBinary, nullable=False),
        sa.Column("frontier", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_checkpoints"),
        sa.UniqueConstraint("tree_size", name="uq_audit_checkpoints_tree_size"),
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION enclave_refuse_checkpoint_change() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'insufficient_privilege';
            END $$;
            """
        )
        op.execute(
            "CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE "
            "ON audit_checkpoints FOR EACH ROW EXECUTE FUNCTION enclave_refuse_checkpoint_change()"
        )
        op.execute(
            "CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints "
            "FOR EACH STATEMENT EXECUTE FUNCTION enclave_refuse_checkpoint_change()"
        )
        op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_checkpoints FROM PUBLIC")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_checkpoints_no_{event.lower()} BEFORE {event} "
                f"ON audit_checkpoints BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
            )


def downgrade():
    # PUBLIC never held UPDATE, DELETE or TRUNCATE on tables: the REVOKE needs no undoing.
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_checkpoints_no_truncate ON audit_checkpoints")
        op.execute("DROP TRIGGER audit_checkpoints_append_only ON audit_checkpoints")
        op.execute("DROP FUNCTION enclave_refuse_checkpoint_change()")
    else:
        op.execute("DROP TRIGGER audit_checkpoints_no_delete")
        op.execute("DROP TRIGGER audit_checkpoints_no_update")
    op.drop_table("audit_checkpoints")
