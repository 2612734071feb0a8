"""Access modes on grants: desktop (pixels only) or notebook.

Every existing grant becomes ``desktop``: until now a grant let JupyterLab show the data in
the browser, and from here on only an admin's explicit ``--mode notebook`` does.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("mode", sa.String(16), nullable=False, server_default="desktop"))
        batch.create_check_constraint(op.f("ck_grants_mode"), "mode IN ('desktop','notebook')")


def downgrade():
    with op.batch_alter_table("grants") as batch:
        batch.drop_constraint(op.f("ck_grants_mode"), type_="check")
        batch.drop_column("mode")
