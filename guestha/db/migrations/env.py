# SPDX-License-Identifier: Apache-2.0
"""alembic's environment for the ledger's migrations: always online, on
the connection :func:`guestha.db.migration.upgrade` passes in (already in
its transaction, so that on SQLite concurrent starters take turns)."""

from alembic import context

from guestha.db import models

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=models.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
context.run_migrations()
