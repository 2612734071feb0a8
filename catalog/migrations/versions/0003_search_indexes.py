"""Search indexes: trigram (pg_trgm) on datasets.search_text for PostgreSQL.

``Catalog.search`` matches each word as a substring (``LIKE '%word%'``), which a
trigram GIN index answers without scanning every dataset. SQLite keeps plain LIKE.
If the database role may not create the extension, search still works, unindexed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import logging

from alembic import op
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("catalog.migrations")


def upgrade():
    if op.get_context().dialect.name != "postgresql":
        return
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except DBAPIError as exc:
        log.warning("pg_trgm unavailable (%s); catalog search will not be indexed", exc.orig)
        return
    # fastupdate off: new and edited datasets go straight into the index instead of a
    # pending list that only VACUUM folds in (and that makes the planner avoid the index).
    op.execute(
        "CREATE INDEX ix_datasets_search_text_trgm ON datasets "
        "USING gin (search_text gin_trgm_ops) WITH (fastupdate = off)"
    )


def downgrade():
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_datasets_search_text_trgm")
