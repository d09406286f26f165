"""Alembic environment: always run from ``node.ledger.engine.migrate`` with an open connection."""

from __future__ import annotations

from alembic import context

from node.ledger.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
