"""Alembic environment for the catalog, driven from code (no alembic.ini).

``catalog.migrate`` hands over an open connection inside a transaction, so the
same code path works from a source checkout and from an installed package.
"""

from alembic import context

from catalog.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run catalog migrations through catalog.migrate, which passes a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
