# SPDX-License-Identifier: Apache-2.0
"""The controllers' database: the ledger's tables (:mod:`.models`), the
engine (:mod:`.api`) and their versioned migrations (:mod:`.migration`,
alembic scripts under ``migrations/``)."""
