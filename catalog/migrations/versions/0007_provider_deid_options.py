"""De-identification options a provider may use (PS3.15 E.3, as PS3.16 codes).

``providers.deid_options`` is a JSON list of codes such as ``"113108"`` (Retain Patient
Characteristics). Existing providers get none: until now the enclave applied no option, and
from here on only a curator's ``enclave providers set NAME --deid-option CODE`` adds one.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    # A plain ADD COLUMN on both engines: a batch copy of ``providers`` on SQLite would drop a
    # table that transfers reference (foreign keys are on).
    op.add_column(
        "providers",
        sa.Column("deid_options", sa.JSON, nullable=False, server_default=sa.text("'[]'")),
    )


def downgrade():
    # SQLite has had DROP COLUMN since 3.35; Alembic's SQLite dialect would copy the table.
    op.execute("ALTER TABLE providers DROP COLUMN deid_options")
