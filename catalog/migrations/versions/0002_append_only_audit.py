"""Make the audit trail append-only and version content immutable, in the database itself.

Triggers refuse UPDATE and DELETE on ``audit_events`` (and TRUNCATE on PostgreSQL), and
refuse changes to a version's content hash, size, store location and key, so that neither
a bug nor someone with a SQL prompt and the application's credentials rewrites history
quietly.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

AUDIT_MESSAGE = "audit_events is append-only"
VERSION_MESSAGE = "dataset version content is immutable"
IMMUTABLE_COLUMNS = (
    "content_hash",
    "size_bytes",
    "store_location",
    "wrapped_key",
    "dataset_id",
    "version",
)


def upgrade():
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION enclave_refuse_audit_change() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{AUDIT_MESSAGE}' USING ERRCODE = 'insufficient_privilege';
            END $$;
            """
        )
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION enclave_refuse_audit_change()"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION enclave_refuse_audit_change()"
        )
        changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in IMMUTABLE_COLUMNS)
        op.execute(
            f"""
            CREATE FUNCTION enclave_refuse_version_content_change() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' OR {changed} THEN
                    RAISE EXCEPTION '{VERSION_MESSAGE}' USING ERRCODE = 'insufficient_privilege';
                END IF;
                RETURN NEW;
            END $$;
            """
        )
        op.execute(
            "CREATE TRIGGER dataset_versions_immutable BEFORE UPDATE OR DELETE ON dataset_versions "
            "FOR EACH ROW EXECUTE FUNCTION enclave_refuse_version_content_change()"
        )
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{event.lower()} BEFORE {event} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, '{AUDIT_MESSAGE}'); END"
            )
        changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in IMMUTABLE_COLUMNS)
        op.execute(
            "CREATE TRIGGER dataset_versions_immutable BEFORE UPDATE ON dataset_versions "
            f"WHEN {changed} BEGIN SELECT RAISE(ABORT, '{VERSION_MESSAGE}'); END"
        )
        op.execute(
            "CREATE TRIGGER dataset_versions_no_delete BEFORE DELETE ON dataset_versions "
            f"BEGIN SELECT RAISE(ABORT, '{VERSION_MESSAGE}'); END"
        )


def downgrade():
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER dataset_versions_immutable ON dataset_versions")
        op.execute("DROP FUNCTION enclave_refuse_version_content_change()")
        op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION enclave_refuse_audit_change()")
    else:
        op.execute("DROP TRIGGER dataset_versions_no_delete")
        op.execute("DROP TRIGGER dataset_versions_immutable")
        op.execute("DROP TRIGGER audit_events_no_delete")
        op.execute("DROP TRIGGER audit_events_no_update")
