"""Alembic environment: uses the connection handed over by ``sheesh.store.db.migrate``."""

from alembic import context

from sheesh.store.tables import Base

config = context.config
connection = config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
